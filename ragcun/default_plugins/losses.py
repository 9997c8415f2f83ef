from ragcun.hookspecs import hookimpl


@hookimpl
def register_losses(register):
    """Built-in losses (see ragcun/losses/)."""
