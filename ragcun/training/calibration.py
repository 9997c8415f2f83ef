"""Training start-up: calibrate a head that asks for it, so SIGReg has unit-scale coordinates to act on.

Why: the embedded encoder outputs unit vectors, so an orthogonal head keeps each coordinate's spread at
about ``1/sqrt(H)`` (0.04 for MiniLM). SIGReg compares every 1-D projection with N(0, 1); on such a batch it
sits near its collapsed value (~12.8 at batch 32) and its gradient barely moves the embeddings
(benchmarks/RESULTS.md). A head with ``init_scale="auto"`` (the gaussian head's default) is therefore scaled
and, for translation-invariant distances, centred from a probe batch of training texts before the first
step, so that its outputs have zero mean and unit RMS spread per coordinate.

Training must still start from the encoder's own ranking and from the same InfoNCE logits: a uniform scale
``c`` and a shift change no Euclidean ranking, and the contrastive temperature is multiplied by ``c**k``,
``k`` being the distance's degree of homogeneity (1 for euclidean, 2 for sqeuclidean and dot, 0 for cosine),
so ``similarity / temperature`` is unchanged at step 0. The rescaled temperature is a persistent buffer of
the loss, saved in every checkpoint, so a resumed run keeps it (and does not calibrate again).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

PROBE_SLICE = 32  # texts per forward pass of the probe (bounds its memory)


@dataclass
class Calibration:
    factor: float  # the head's outputs were multiplied by this
    centered: bool
    temperature_factor: float  # every contrastive term's temperature was multiplied by this
    probe_texts: int

    def as_dict(self) -> dict:
        return asdict(self)


def _contrastive_terms(loss_module) -> list:
    from ragcun.losses.composite import CompositeLoss

    candidates = ([module for _, _, module in loss_module.terms()] if isinstance(loss_module, CompositeLoss)
                  else [loss_module])
    return [m for m in candidates if hasattr(m, "rescale_temperature")]


def calibrate(model, loss_module, texts: list[str], ctx) -> Calibration | None:
    """Calibrate ``model.head`` if it asks for it (``head.calibrates``) and keep the initial logits of every
    contrastive term of ``loss_module`` unchanged; ``None`` when the head does not calibrate.

    The head does the work (``head.calibrate(features, center=..., ctx=ctx)``, the protocol of
    :class:`ragcun.protocols.CalibratingHead`): every rank computes the same probe, and the head agrees with the
    other ranks on its parameters and factor (the gaussian head averages them) so that all hold identical weights
    and temperatures even where floating-point reductions differ between devices. This function never touches the
    head's parameters.
    """
    head = model.head
    if not getattr(head, "calibrates", False):
        return None
    degree = getattr(model.distance, "homogeneity", None)
    if degree is None:
        raise ValueError(f"head.gaussian.init_scale=auto cannot keep the initial logits of distance "
                         f"{type(model.distance).__name__} (its similarity is not homogeneous in the embedding "
                         "scale); set a number, e.g. --set head.gaussian.init_scale=1")
    if len(texts) < 2:
        raise ValueError("head.gaussian.init_scale=auto needs at least 2 training texts to calibrate from")
    # a shift changes cosine and dot rankings: centre only for translation-invariant distances
    centered = bool(getattr(head, "center", True)) and bool(getattr(model.distance, "translation_invariant", False))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # in slices of the one padded batch: the same inputs, without one forward's activations for all N
            # texts at once (256 texts held about 1 GB, as much as a training step's GradCache chunk)
            tokens = {k: v.to(model.device) for k, v in model.tokenize(texts).items()}
            features = torch.cat([model.encoder({k: v[i:i + PROBE_SLICE] for k, v in tokens.items()})
                                  for i in range(0, len(texts), PROBE_SLICE)])  # (N, H)
            factor = float(head.calibrate(features.float(), center=centered, ctx=ctx))  # the same on every rank
    finally:
        model.train(was_training)
    temperature_factor = factor ** degree
    for term in _contrastive_terms(loss_module):
        term.rescale_temperature(temperature_factor)
    return Calibration(factor=factor, centered=centered,
                       temperature_factor=temperature_factor, probe_texts=len(texts))
