"""Built-in heads (see ragcun/heads/), registered through the same hook as a plugin's."""

from ragcun.hookspecs import hookimpl


@hookimpl
def register_heads(register):
    register("identity", "ragcun.heads.identity:IdentityHead", aliases=("none",), provides=("mean",),
             summary="the encoder's pooled vector, unchanged")
    register("linear", "ragcun.heads.linear:LinearHead", provides=("mean",),
             summary="affine projection, optionally L2-normalized")
    # provides/needs describe the component built with its default settings (a test checks they agree);
    # the gaussian head adds logvar with head.gaussian.logvar=true
    register("gaussian", "ragcun.heads.gaussian:GaussianHead", provides=("mean",),
             summary="unnormalized linear map to out_dim=512, optional per-dimension log-variance")
    register("center", "ragcun.heads.fitted:CenterHead", provides=("mean",),
             summary="subtract the mean of a fitted sample (training-free; fit it on the corpus)")
    register("whiten", "ragcun.heads.fitted:WhitenHead", provides=("mean",),
             summary="ZCA whitening, or PCA whitening to dim=k, fitted on a sample (training-free)")
