from __future__ import annotations


def count_parameters(model_spec: str, head: str | None = None, set_options=()) -> dict[str, int]:
    """Parameter counts of a checkpoint or of ``encoder + head`` built from specs."""
    from ragcun.model import EmbeddingModel
    from ragcun.resolve import is_checkpoint, resolve_model
    from ragcun.spec import settings_from_options

    settings = settings_from_options(set_options)
    if is_checkpoint(model_spec) or head is None:
        model = resolve_model(model_spec, settings=settings)
    else:
        model = EmbeddingModel.build(model_spec, head, "euclidean", settings)

    def count(module, trainable_only=False):
        return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

    return {"encoder": count(model.encoder), "head": count(model.head), "total": count(model),
            "trainable": count(model, trainable_only=True)}
