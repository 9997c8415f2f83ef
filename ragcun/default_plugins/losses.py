from ragcun.hookspecs import hookimpl


@hookimpl
def register_losses(register):
    """Built-in losses (see ragcun/losses/)."""
    register("contrastive", "ragcun.losses.contrastive:ContrastiveLoss", aliases=("infonce",), needs=("mean",),
             summary="InfoNCE over in-batch and hard negatives, logits from the model's distance")
    register("isotropy", "ragcun.losses.isotropy:IsotropyLoss", aliases=("sigreg",), needs=("mean",),
             summary="SIGReg (LeJEPA): sliced Epps-Pulley test toward an isotropic N(0, I)")
    register("variance-covariance", "ragcun.losses.variance_covariance:VarianceCovarianceLoss",
             aliases=("vicreg",), needs=("mean",),
             summary="VICReg-style: per-dimension std >= gamma and decorrelated dimensions")
    register("uniformity", "ragcun.losses.uniformity:UniformityLoss", needs=("mean",),
             summary="Wang & Isola uniformity: log mean exp(-t ||x_i - x_j||^2)")
    register("norm", "ragcun.losses.norm:NormLoss", needs=("mean",),
             summary="pull the mean squared norm toward a target (default D)")
    register("gaussian-kl", "ragcun.losses.gaussian_kl:GaussianKLLoss", needs=("mean", "logvar"),
             summary="KL of each text's diagonal Gaussian to N(0, I) (needs head.gaussian.logvar=true)")
    register("margin-mse", "ragcun.losses.distill:MarginMSELoss", aliases=("distill-margin-mse",), needs=("mean",),
             summary="Margin-MSE distillation: student margins s(q,pos)-s(q,neg) regressed on a teacher's")
    register("distill-kl", "ragcun.losses.distill:DistillKLLoss", aliases=("kl-distill",), needs=("mean",),
             summary="KL(teacher || student) of the softmax over each query's own positive and negatives")
    register("matryoshka", "ragcun.losses.matryoshka:MatryoshkaLoss", needs=("mean",), wraps=True,
             summary="matryoshka:LOSS: LOSS on prefixes of the embedding (loss.matryoshka.dims), averaged")
