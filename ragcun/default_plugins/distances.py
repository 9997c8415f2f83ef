"""Built-in distances (see ragcun/distances/), registered through the same hook as a plugin's."""

from ragcun.hookspecs import hookimpl


@hookimpl
def register_distances(register):
    register("euclidean", "ragcun.distances.euclidean:EuclideanDistance", aliases=("l2",), needs=("mean",),
             summary="||q - d||, searchable as [q, 1] . [2d, -||d||^2]")
    register("sqeuclidean", "ragcun.distances.sqeuclidean:SquaredEuclideanDistance",
             aliases=("sq-euclidean", "squared-euclidean"), needs=("mean",), summary="||q - d||^2")
    register("cosine", "ragcun.distances.cosine:CosineDistance", aliases=("cos", "cos-sim"), needs=("mean",),
             summary="cosine similarity (sentence-transformers' default)")
    register("dot", "ragcun.distances.dot:DotProductDistance", aliases=("inner-product", "ip"), needs=("mean",),
             summary="inner product")
    register("wasserstein", "ragcun.distances.wasserstein:WassersteinDistance", aliases=("w2",),
             needs=("mean", "logvar"),
             summary="2-Wasserstein between diagonal Gaussians: Euclidean on [mu, sigma]")
    register("expected-sqeuclidean", "ragcun.distances.expected_sqeuclidean:ExpectedSquaredEuclideanDistance",
             needs=("mean", "logvar"), summary="E||x - y||^2 = ||mu_q - mu_d||^2 + sum sigma_q^2 + sum sigma_d^2")
