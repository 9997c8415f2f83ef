"""Building what a run trains: the model (frozen parts, unused parameters), the loss, and the checks that
must speak before the first step (the isotropy-scale warning, loss failures named by their plugin)."""

from __future__ import annotations

import torch

from ragcun.encoders.cpu_dropout import install_fast_dropout
from ragcun.training.config import TrainConfig
from ragcun.training.faults import LossFailed, TrainingDiverged


def build_training_model(config: TrainConfig):
    from ragcun.model import EmbeddingModel

    model = EmbeddingModel.build(config.encoder, config.head, config.distance, config.settings or None)
    if config.freeze_encoder:
        for param in model.encoder.parameters():
            param.requires_grad_(False)
    if config.gradient_checkpointing and not config.freeze_encoder:  # a frozen encoder keeps no activations
        enable_gradient_checkpointing(model.encoder, config.encoder)
    # dropout masks drawn 10x faster on a CPU (half of a CPU step was torch's attention dropout); nothing changes
    # on a GPU or in evaluation, and RAGCUN_CPU_FAST_DROPOUT=0 keeps torch's
    install_fast_dropout(model)
    model.limit_training_tokens(config.max_seq_length)
    return model


def enable_gradient_checkpointing(encoder, name: str) -> None:
    enable = getattr(encoder, "enable_gradient_checkpointing", None)
    if enable is None:
        raise ValueError(f"--gradient-checkpointing: the encoder {name} ({type(encoder).__name__}) does not support "
                         "it (it needs an enable_gradient_checkpointing() method, as the hf encoders have); "
                         "--grad-cache-chunk K bounds training memory for any encoder")
    enable()


def freeze_unused_parameters(model) -> list[str]:
    """Stop training parameters the embedding never uses (e.g. a BERT pooler beside mean pooling).

    They would never receive a gradient (so AdamW would skip them anyway), but DDP requires every trained
    parameter to get one each step. One tiny forward/backward finds them.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        return []
    was_training = model.training
    model.eval()
    try:
        out = model.embed(["a"])
        total = out.mean.sum() + (out.logvar.sum() if out.logvar is not None else 0.0)
        grads = torch.autograd.grad(total, [p for _, p in trainable], allow_unused=True)
    finally:
        model.train(was_training)
    unused = [n for (n, p), g in zip(trainable, grads) if g is None]
    for name, param in trainable:
        if name in unused:
            param.requires_grad_(False)
    return unused


def build_training_loss(config: TrainConfig, model):
    from ragcun.components import check_compatible
    from ragcun.losses.composite import build_loss

    loss = build_loss(config.loss, config.settings or None, distance=model.distance, dim=model.dim)
    check_compatible(model.head, loss, head_name=config.head, distance_name=f"loss {config.loss}")
    return loss


def check_batch_can_teach(config: TrainConfig, loss_module, world_size: int) -> None:
    """Refuse a batch too small for the loss to learn anything (``--batch-size 1 --loss contrastive`` without hard
    negatives logs loss 0.0 and gradient 0.0 at every step), before any data is read. The loss sees one
    micro-batch of ``--batch-size`` queries per process, gathered over the processes; ``--grad-accum`` adds
    micro-batches, not examples within one, so it does not help."""
    requirement = getattr(loss_module, "batch_requirement", None)
    if requirement is None:  # a plain callable (tests, plugins without the method): nothing declared
        return
    needed, why = requirement(config.negatives)
    have = config.batch_size * world_size
    if have >= needed:
        return
    processes = f" x {world_size} processes" if world_size > 1 else ""
    fixes = [f"--batch-size {-(-needed // world_size)} or more (--grad-cache-chunk keeps the memory of a large "
             "batch low)"]
    if "negatives" in why:
        fixes.append("hard negatives (--negatives 1 --mine-negatives bm25)")
    raise ValueError(f"--batch-size {config.batch_size}{processes}: the loss {config.loss} {why}, so a batch of "
                     f"{have} gives it nothing to learn from (it needs {needed} queries per micro-batch; --grad-accum "
                     f"does not add them); use " + ", or ".join(fixes))


# SIGReg measures the distance of every 1-D projection from N(0, 1): embeddings whose coordinates spread far
# less than 1 look nearly collapsed to it, and its gradient then barely moves them (measured: benchmarks/RESULTS.md)
SMALL_SPREAD = 0.2  # the spread is measured on ragcun.training.samples.SCALE_PROBE_TEXTS documents


def isotropy_weight(loss_module) -> float:
    """The total weight a (composite) loss gives SIGReg terms."""
    from ragcun.losses.composite import CompositeLoss
    from ragcun.losses.isotropy import IsotropyLoss

    if not isinstance(loss_module, CompositeLoss):
        return 0
    return sum(weight for _, weight, module in loss_module.terms() if isinstance(module, IsotropyLoss))


def isotropy_scale_warning(loss_module, embeddings: torch.Tensor) -> str | None:
    """A warning when the loss gives the isotropy term a weight but the embeddings (N, D) are too small for it
    to act (e.g. an identity head, or a gaussian head with ``init_scale=1``, on an encoder that outputs unit
    vectors; the default ``init_scale="auto"`` calibrates them to spread 1); else ``None``."""
    if isotropy_weight(loss_module) <= 0 or embeddings.shape[0] < 2:
        return None
    spread = float(embeddings.detach().float().std(dim=0).mean())  # mean per-coordinate std over the sample
    if spread >= SMALL_SPREAD:
        return None
    factor = 1.0 / max(spread, 1e-6)
    return (f"the isotropy term will barely act: the embeddings' coordinates spread {spread:.3f} on average, "
            "while SIGReg measures the distance from N(0, I) (spread 1), so it sees a nearly collapsed batch. "
            "To let it act, use --head gaussian with its default --set head.gaussian.init_scale=auto (calibrated "
            f"from the training data before the first step), or scale the embeddings by about {factor:.3g} "
            "yourself (a head whose outputs are that much larger, with the contrastive temperature multiplied "
            "by the same factor for euclidean distance)")


def as_output(result):
    from ragcun.losses.base import LossOutput

    return result if isinstance(result, LossOutput) else LossOutput(result, {})



def loss_failure(name: str, module, exc: Exception) -> Exception | None:
    """The :class:`LossFailed` that names the loss term that raised ``exc`` and its package (a plugin's bug then
    reads as such, not as a traceback from deep inside ragcun's loop); ``None`` (raise ``exc`` unchanged) for a
    ValueError or a TrainingDiverged. The ``on_failure`` of :meth:`CompositeLoss.forward`."""
    from ragcun.components import provenance

    if isinstance(exc, (ValueError, TrainingDiverged)):
        return None
    info = provenance(module)
    label = info["name"] or name or type(module).__name__
    return LossFailed(f"loss {label!r} (from the package {info['provider']!r}) raised {type(exc).__name__}: {exc}")


def with_named_failures(loss_module):
    """What the training steps call instead of ``loss_module``: the same values, with an exception a loss term
    raises named by :func:`loss_failure` (each term of a composite; a single ``nn.Module`` loss as a whole). A
    callable that is no ``nn.Module`` (a wrapper given as ``loss_fn``) is called unchanged."""
    import functools

    from ragcun.losses.composite import CompositeLoss

    if isinstance(loss_module, CompositeLoss):
        return functools.partial(loss_module, on_failure=loss_failure)
    if not isinstance(loss_module, torch.nn.Module):
        return loss_module

    def named(inputs):
        try:
            return loss_module(inputs)
        except Exception as exc:
            replacement = loss_failure("", loss_module, exc)
            if replacement is None:
                raise
            raise replacement from exc

    return named


def training_data(config: TrainConfig, model, ctx, in_memory=None):
    """This rank's batches of the run's training data (``in_memory``: examples given from Python instead of
    ``--train-data``), hard negatives mined first if asked: (source, stream)."""
    from ragcun.data.training import BatchStream, open_source

    if in_memory is not None:
        source = in_memory
    else:
        mined = None
        if config.mine_negatives:
            from ragcun.training.negatives import mined_negatives_for

            mined = mined_negatives_for(config, model, ctx)
        source = open_source(config.train_data, data_dir=config.data_dir, seed=config.seed,
                             negatives=config.negatives, qrels_threshold=config.qrels_threshold,
                             shuffle_buffer=config.shuffle_buffer, mined=mined)
    if next(iter(source.examples(0)), None) is None:  # an empty file: say so, not an IndexError downstream
        raise ValueError(f"--train-data {config.train_data}: {source.description} holds no training examples")
    return source, BatchStream(source, config.batch_size, rank=ctx.rank, world_size=ctx.world_size,
                               no_duplicate_queries=config.no_duplicate_queries)


def fit_head_on_training_documents(model, source, config: TrainConfig) -> int | None:
    """A head fitted from data (center, whiten) is fitted once, before the first step of a new run, on the
    distinct training documents (at most FIT_SAMPLE), and stays fixed while the encoder trains under it; it is
    saved with every checkpoint and the final model. Returns how many documents, or None (no such head)."""
    from ragcun.heads.fitted import FIT_SAMPLE, needs_fit
    from ragcun.training.samples import first_texts

    if not needs_fit(model.head):
        return None
    documents = list(dict.fromkeys(first_texts(source, FIT_SAMPLE)))
    return model.fit_head(documents, config.eval_batch_size, show_progress=False)

