"""``hf``: any local Hugging Face transformers model folder, pooled to one vector per text.

When the folder is a sentence-transformers model (``modules.json``), its pooling mode
(``1_Pooling/config.json``), ``max_seq_length`` (``sentence_bert_config.json``) and its ``Dense`` and
``Normalize`` modules are honoured, so the vectors equal ``SentenceTransformer(path).encode(texts)`` (a folder
written by ``ragcun export`` loads back with its head). Nothing is ever downloaded: the path must be a folder
on disk.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ragcun.encoders.st_dense import STDense, build_post_modules

POOLINGS = ("mean", "cls", "max")
# Files that describe a model without its weights: copied into checkpoints so they are self-contained.
_ASSET_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                "merges.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model", "added_tokens.json",
                "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


ALLOW_PICKLE_ENV = "RAGCUN_ALLOW_PICKLE"


def check_no_pickle_only(folder: Path) -> None:
    """A folder whose weights exist only as pickles (``pytorch_model.bin``) is refused: ragcun loads
    safetensors. ``RAGCUN_ALLOW_PICKLE=1`` lets transformers read it (``torch.load(weights_only=True)``)."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
    if pickles:
        raise ValueError(f"{folder} holds its weights only as a pickle ({', '.join(pickles)}); ragcun loads "
                         "safetensors. Convert it (transformers: AutoModel.from_pretrained(PATH)"
                         ".save_pretrained(PATH, safe_serialization=True)), or set "
                         f"{ALLOW_PICKLE_ENV}=1 to let transformers read it with torch.load(weights_only=True)")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def read_sentence_transformers_config(path: Path) -> dict[str, Any]:
    """Pooling, max_seq_length and normalization from a sentence-transformers folder ({} if it is not one).

    ``normalize`` is a Normalize right after the pooling; ``post`` lists the modules after that, in order
    (``{"type": "dense", "path", "config"}`` or ``{"type": "normalize"}``), e.g. an exported ragcun head.
    """
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return {}
    found: dict[str, Any] = {"normalize": False, "post": []}
    for module in _read_json(modules_file):
        kind = module.get("type", "")
        if kind.endswith("Dense"):
            config = _read_json(path / module.get("path", "") / "config.json")
            found["post"].append({"type": "dense", "path": module.get("path", ""), "config": config})
        elif kind.endswith("Normalize") and found["post"]:
            found["post"].append({"type": "normalize"})
        elif kind.endswith("Pooling"):
            pooling_cfg = _read_json(path / module.get("path", "") / "config.json")
            if pooling_cfg.get("pooling_mode_cls_token"):
                found["pooling"] = "cls"
            elif pooling_cfg.get("pooling_mode_max_tokens"):
                found["pooling"] = "max"
            elif pooling_cfg.get("pooling_mode_mean_tokens"):
                found["pooling"] = "mean"
            else:
                raise ValueError(f"{path}: pooling mode in {module.get('path')}/config.json is not supported "
                                 f"(ragcun supports {', '.join(POOLINGS)})")
        elif kind.endswith("Normalize"):
            found["normalize"] = True
        elif not kind.endswith("Transformer"):
            # Ignoring it would make the vectors silently differ from SentenceTransformer(path)'s.
            raise ValueError(f"{modules_file}: module {kind!r} is not supported by the hf encoder (it reads "
                             "Transformer, Pooling, Dense and Normalize)")
    st_cfg = path / "sentence_bert_config.json"
    if st_cfg.is_file():
        cfg = _read_json(st_cfg)
        if cfg.get("max_seq_length"):
            found["max_seq_length"] = int(cfg["max_seq_length"])
        if cfg.get("do_lower_case"):
            found["do_lower_case"] = True
    return found


class HFEncoder(nn.Module):
    """A transformers ``AutoModel`` plus pooling.

    Args:
        path: local model folder (``config.json``, tokenizer files, weights).
        pooling: ``auto`` (the sentence-transformers config, else ``mean``), ``mean``, ``cls`` or ``max``.
        max_seq_length: tokens per text; ``None`` takes the sentence-transformers value, else the model's limit.
        normalize: L2-normalize the pooled vector; ``None`` follows the sentence-transformers config.
        init_weights: load the folder's weights (``False`` when a ragcun checkpoint supplies them).
    """

    def __init__(self, path: str, pooling: str = "auto", max_seq_length: int | None = None,
                 normalize: bool | None = None, init_weights: bool = True) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # ragcun shows its own progress; tqdm bars per load are noise

        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ValueError(f"encoder path {folder} is not a folder (ragcun never downloads models: "
                             "give a local transformers or sentence-transformers folder)")
        if not (folder / "config.json").is_file():
            raise ValueError(f"{folder} is not a transformers model folder: it has no config.json")
        self.path = str(folder)
        st = read_sentence_transformers_config(folder)
        self.pooling = st.get("pooling", "mean") if pooling == "auto" else pooling
        if self.pooling not in POOLINGS:
            raise ValueError(f"encoder.hf.pooling must be one of auto, {', '.join(POOLINGS)}; got {pooling!r}")
        self.normalize = st.get("normalize", False) if normalize is None else bool(normalize)
        self.do_lower_case = bool(st.get("do_lower_case", False))
        allow_pickle = os.environ.get(ALLOW_PICKLE_ENV, "") not in ("", "0")
        if init_weights and not allow_pickle:
            check_no_pickle_only(folder)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            config = AutoConfig.from_pretrained(self.path, local_files_only=True)
            if init_weights:
                self.model = AutoModel.from_pretrained(self.path, config=config, local_files_only=True,
                                                       use_safetensors=None if allow_pickle else True)
            else:
                self.model = AutoModel.from_config(config)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot load a transformers model from {folder}: {exc}") from None
        except Exception as exc:  # e.g. an UnpicklingError from a .bin that holds more than tensors
            if "weights_only" in str(exc) or "pickle" in type(exc).__name__.lower():
                raise ValueError(f"refused to load the weights in {folder}: the pickle holds objects other than "
                                 "tensors, which ragcun never unpickles (convert the model to safetensors)") from None
            raise
        limit = getattr(config, "max_position_embeddings", None) or 512
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", limit)
        if max_seq_length is None:
            max_seq_length = st.get("max_seq_length", min(limit, tokenizer_limit))
        self.max_seq_length = int(max_seq_length)
        # Dense/Normalize after the pooling (an exported head, or a hub model's projection); their weights come
        # from the folder, or from the ragcun checkpoint when init_weights is False.
        self.post = build_post_modules(folder, st.get("post", []), load_weights=init_weights)
        dense = [m for m in self.post if isinstance(m, STDense)]
        self.dim = int(dense[-1].out_features if dense else config.hidden_size)

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """``max_length``: a tighter limit than the encoder's own for this call (training's --max-seq-length)."""
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        limit = self.max_seq_length if max_length is None else min(int(max_length), self.max_seq_length)
        return dict(self.tokenizer(texts, padding=True, truncation="longest_first",
                                   max_length=limit, return_tensors="pt"))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:  # -> (B, H)
        mask = features["attention_mask"]
        inputs = {k: v for k, v in features.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        tokens = self.model(**inputs, return_dict=True).last_hidden_state  # (B, T, H)
        if self.pooling == "cls":
            pooled = tokens[:, 0]
        elif self.pooling == "max":
            pooled = tokens.masked_fill(mask[..., None] == 0, torch.finfo(tokens.dtype).min).max(1).values
        else:
            m = mask[..., None].to(tokens.dtype)  # (B, T, 1)
            pooled = (tokens * m).sum(1) / m.sum(1).clamp_min(1e-9)
        if self.normalize:
            pooled = F.normalize(pooled, p=2, dim=1)
        for module in self.post:
            pooled = module(pooled)
        return pooled

    def enable_gradient_checkpointing(self) -> None:
        """Keep only each transformer layer's input for the backward pass and recompute the layer there
        (``--gradient-checkpointing``): the activations of one layer at a time instead of all of them, for about
        one more forward pass. The recomputation replays the same dropout masks, so the gradient is the same."""
        # an encoder keeps no key/value cache, and transformers warns that a cache is incompatible with
        # checkpointing on every training run unless the config says so
        if getattr(self.model.config, "use_cache", None):
            self.model.config.use_cache = False
        # transformers 5 renamed it (the old name warns that it goes in v6)
        enable = getattr(self.model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def get_config(self) -> dict[str, Any]:
        return {"path": self.path, "pooling": self.pooling, "max_seq_length": self.max_seq_length,
                "normalize": self.normalize}

    def save_assets(self, folder: Path) -> dict[str, Any]:
        """Copy config and tokenizer files (not weights) into ``folder``; return the config that reloads them."""
        folder.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        src = Path(self.path)
        for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
            if (src / name).is_file() and not (folder / name).exists():
                shutil.copy2(src / name, folder / name)
        if (src / "modules.json").is_file():
            # Each module's config (1_Pooling, N_Dense, ...), not its weights: model.safetensors holds those.
            for module in _read_json(src / "modules.json"):
                config = src / module.get("path", "") / "config.json"
                if module.get("path") and config.is_file() and not (folder / module["path"] / "config.json").exists():
                    (folder / module["path"]).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(config, folder / module["path"] / "config.json")
        return {**self.get_config(), "path": folder.name}
