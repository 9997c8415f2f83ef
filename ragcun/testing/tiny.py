"""Tiny random transformers built from a config (no download), with the real packaged MiniLM tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def make_tiny_bert(folder: str | Path, *, hidden_size: int = 32, layers: int = 2, heads: int = 2,
                   max_positions: int = 128, seed: int = 0, sentence_transformers: bool = True) -> Path:
    """Write a randomly initialised BERT (hidden 32, 2 layers) with MiniLM's tokenizer into ``folder``.

    With ``sentence_transformers=True`` it also writes a mean-pooling sentence-transformers config
    (max_seq_length 64), so it loads both in ragcun and in ``SentenceTransformer``.
    """
    import json

    import torch
    from transformers import BertConfig, BertModel

    from ragcun.encoders.embedded import embedded_model_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    src = Path(embedded_model_path())
    for name in TOKENIZER_FILES:
        shutil.copy2(src / name, folder / name)
    config = BertConfig(vocab_size=30522, hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=hidden_size * 2,
                        max_position_embeddings=max_positions)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    if sentence_transformers:
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": hidden_size, "pooling_mode_mean_tokens": True,
             "pooling_mode_cls_token": False, "pooling_mode_max_tokens": False}))
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    return folder
