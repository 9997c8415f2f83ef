from ragcun.hookspecs import hookimpl


@hookimpl
def register_evaluators(register):
    """Built-in evaluators (see ragcun/evaluation/)."""
