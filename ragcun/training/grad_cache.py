"""Gradient caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup").

A contrastive batch of N texts needs every text's activations alive until the loss (which couples all of
them) is backpropagated. GradCache splits that into three passes whose peak memory is one chunk of K texts:

1. embed every chunk **without a graph** (``torch.no_grad``), remembering each chunk's RNG state;
2. compute the loss on the detached embeddings (leaves with ``requires_grad``) and backpropagate it to them,
   caching ``dL/d(embedding)`` (cross-rank collectives of the losses run here, on every rank, as usual);
3. re-embed chunk by chunk **with** a graph, restoring the chunk's RNG state so dropout draws the same masks,
   and backpropagate ``sum(embedding * cached_grad)``, whose parameter gradient is the chain rule's
   ``dL/dθ = Σ dL/de · de/dθ``.

Every term of the loss (contrastive, SIGReg, regularizers) sees the whole batch in pass 2, so the gradient
equals the uncached step's (tested in tests/test_grad_cache.py). Under DDP all chunks but the last run
inside ``no_sync()`` so gradients are all-reduced once per step.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

from ragcun.embedding import Embedding
from ragcun.losses.base import LossInputs, LossOutput

ROLES = ("queries", "positives", "negatives")


def forward_texts(forward: Callable, tokenize: Callable, texts: list[str], device: torch.device,
                  autocast=None) -> Embedding:
    """Tokenize, move, forward (through ``forward``: the DDP wrapper when there is one); float32 out."""
    features = {k: v.to(device, non_blocking=True) for k, v in tokenize(list(texts)).items()}
    with autocast if autocast is not None else nullcontext():
        out = forward(features)
    return Embedding(out.mean.float(), None if out.logvar is None else out.logvar.float())


def touch(emb: Embedding) -> torch.Tensor:
    """``0 * sum(logvar)``: keeps a head's log-variance in the graph when the loss ignores it (DDP needs every
    trained parameter to receive a gradient)."""
    return emb.logvar.sum() * 0.0 if emb.logvar is not None else emb.mean.new_zeros(())


def loss_inputs(batch, embeddings: dict[str, Embedding | None], step: int) -> LossInputs:
    """The loss's view of a batch: its embeddings, ids, relevance lists and (when the data has them) the teacher's
    scores as a ``(B, 1 + K)`` tensor on the embeddings' device."""
    teacher = getattr(batch, "teacher_scores", None)
    if teacher is not None:
        teacher = torch.tensor(teacher, dtype=torch.float32, device=embeddings["queries"].mean.device)
    return LossInputs(embeddings["queries"], embeddings["positives"], embeddings["negatives"],
                      positive_ids=batch.positive_ids, negative_ids=batch.negative_ids, step=step,
                      relevant_ids=batch.relevant_ids, teacher_scores=teacher)


def _rng_state(device: torch.device):
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state, device: torch.device) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


class GradCache:
    """One cached forward/backward of a batch (see the module docstring).

    ``forward_module`` is what gradients flow through (the DDP wrapper or the model); ``model`` supplies
    ``tokenize`` and the device.
    """

    def __init__(self, model, forward_module, chunk_size: int, autocast=None) -> None:
        if chunk_size < 1:
            raise ValueError(f"--grad-cache-chunk must be positive, got {chunk_size}")
        self.model, self.forward_module, self.chunk_size, self.autocast = model, forward_module, chunk_size, autocast

    def _chunks(self, texts: list[str]) -> list[list[str]]:
        return [texts[i:i + self.chunk_size] for i in range(0, len(texts), self.chunk_size)]

    def step(self, batch, loss_fn: Callable[[LossInputs], LossOutput], step: int, *, scale: float = 1.0,
             sync: bool = True, scaler=None) -> LossOutput:
        """Forward and backward ``scale * loss`` for ``batch``; returns the (detached) loss output."""
        device = self.model.device
        plan: list[tuple[str, list[str], tuple]] = []  # (role, chunk texts, RNG state before its forward)
        detached: dict[str, Embedding | None] = {}
        # -- pass 1: embeddings without a graph ---------------------------------------------------------
        with torch.no_grad():
            for role in ROLES:
                texts = getattr(batch, role)
                if not texts:
                    detached[role] = None
                    continue
                parts = []
                for chunk in self._chunks(list(texts)):
                    plan.append((role, chunk, _rng_state(device)))
                    parts.append(forward_texts(self.model, self.model.tokenize, chunk, device, self.autocast))
                detached[role] = Embedding.cat(parts)
        after_pass1 = _rng_state(device)
        # -- pass 2: the loss on leaf embeddings, and its gradient with respect to them -------------------
        leaves = {role: None if e is None else Embedding(e.mean.detach().requires_grad_(),
                                                         None if e.logvar is None
                                                         else e.logvar.detach().requires_grad_())
                  for role, e in detached.items()}
        out = loss_fn(loss_inputs(batch, leaves, step))
        total = out.total * scale
        (scaler.scale(total) if scaler is not None else total).backward()
        grads = {role: None if e is None else (e.mean.grad, None if e.logvar is None else e.logvar.grad)
                 for role, e in leaves.items()}
        # -- pass 3: re-embed chunk by chunk with a graph; backpropagate the cached gradients -------------
        offsets = {role: 0 for role in ROLES}
        no_sync = getattr(self.forward_module, "no_sync", None)
        for i, (role, chunk, rng) in enumerate(plan):
            last = i == len(plan) - 1
            start = offsets[role]
            offsets[role] += len(chunk)
            g_mean, g_logvar = grads[role]
            _set_rng_state(rng, device)
            context = no_sync() if no_sync is not None and not (last and sync) else nullcontext()
            with context:
                emb = forward_texts(self.forward_module, self.model.tokenize, chunk, device, self.autocast)
                surrogate = touch(emb)
                if g_mean is not None:
                    surrogate = surrogate + (emb.mean * g_mean[start:start + len(chunk)]).sum()
                else:
                    surrogate = surrogate + emb.mean.sum() * 0.0
                if emb.logvar is not None and g_logvar is not None:
                    surrogate = surrogate + (emb.logvar * g_logvar[start:start + len(chunk)]).sum()
                surrogate.backward()
        _set_rng_state(after_pass1, device)
        return LossOutput(out.total.detach(), {k: v.detach() for k, v in out.terms.items()})
