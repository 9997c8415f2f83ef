"""Encoding texts to embeddings without autograd: the one function every part uses (evaluation, training's
diagnostics and mined negatives, ``EmbeddingModel.encode``): fast, deterministic, optionally sharded.

Texts are ordered by tokenized length (longest first) so each batch pads to similar lengths, which is where a
CPU spends its time; the batches are then fixed, and under ``torch.distributed`` batch ``b`` is encoded by rank
``b % world_size`` and the results gathered. Every text is therefore encoded inside exactly the same batch
(same padding, same neighbours) whatever the number of ranks, so sharded embeddings equal one process's.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch

from ragcun.distributed import all_gather_rows, world
from ragcun.embedding import Embedding
from ragcun.heads.fitted import needs_fit, not_fitted_error


def length_order(model, texts: Sequence[str]) -> np.ndarray:
    """Indices of ``texts``, longest first by token count (character count when there is no fast tokenizer)."""
    tokenizer = getattr(getattr(model, "encoder", None), "tokenizer", None)
    max_len = getattr(getattr(model, "encoder", None), "max_seq_length", None)
    lengths = None
    if tokenizer is not None and getattr(tokenizer, "is_fast", False) and max_len:
        try:
            ids = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_len,
                            return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            # ties (many texts hit max_len) are broken by characters, as sentence-transformers orders them
            lengths = np.array([len(x) for x in ids], dtype=np.int64) * (1 << 32) + np.array([len(t) for t in texts])
        except Exception:  # noqa: BLE001 -- an unusual tokenizer: the order only affects speed
            lengths = None
    if lengths is None:
        lengths = np.array([len(t) for t in texts], dtype=np.int64)
    return np.argsort(-lengths, kind="stable")


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def encode(model, texts: Sequence[str], batch_size: int = 128, *, autocast_dtype: torch.dtype | None = None,
           progress=None, shard: bool = True) -> Embedding:
    """Embed ``texts`` (in input order, float32 on the CPU) without autograd, sharded across ranks if any
    (``shard=False``: this process encodes everything, e.g. one rank alone).

    ``progress`` is an optional ``advance(n)`` callback (rank 0 passes one).
    """
    texts = list(texts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if needs_fit(model.head):  # it would pass the encoder's vectors through as if fitted: a silently wrong result
        raise not_fitted_error(model.head)
    rank, world_size = world() if shard else (0, 1)
    has_logvar = "logvar" in getattr(model.head, "provides", ())
    if not texts:
        empty = torch.empty(0, model.dim)
        return Embedding(empty, empty.clone() if has_logvar else None)
    order = length_order(model, texts)
    batches = [order[s:s + batch_size] for s in range(0, len(texts), batch_size)]
    mine = list(range(rank, len(batches), world_size))
    device = model.device
    was_training = model.training
    model.eval()
    outputs: list[torch.Tensor] = []  # per own batch: (b, D) or (b, 2D) with logvar
    try:
        with torch.inference_mode(), autocast_context(device, autocast_dtype):
            for b in mine:
                batch = [texts[i] for i in batches[b]]
                features = {k: v.to(device) for k, v in model.tokenize(batch).items()}
                out = model(features)
                packed = out.mean if out.logvar is None else torch.cat([out.mean, out.logvar], dim=1)
                outputs.append(packed.float())
                if progress is not None:  # this rank's batch stands for its round of ``world_size`` batches
                    progress(sum(len(batches[j]) for j in range(b - rank, min(b - rank + world_size, len(batches)))))
    finally:
        model.train(was_training)
    width = model.dim * (2 if has_logvar else 1)
    local = torch.cat(outputs) if outputs else torch.empty(0, width, device=device)
    if world_size > 1:
        counts = [sum(len(batches[b]) for b in range(r, len(batches), world_size)) for r in range(world_size)]
        gathered = all_gather_rows(local, counts)
        pieces, cursors = [], [0] * world_size
        for b, idx in enumerate(batches):
            r = b % world_size
            pieces.append(gathered[r][cursors[r]:cursors[r] + len(idx)])
            cursors[r] += len(idx)
        ordered = torch.cat(pieces)
    else:
        ordered = local
    ordered = ordered.cpu()
    result = torch.empty_like(ordered)
    result[torch.from_numpy(order)] = ordered
    if has_logvar:
        return Embedding(result[:, :model.dim].contiguous(), result[:, model.dim:].contiguous())
    return Embedding(result)
