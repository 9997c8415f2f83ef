from ragcun.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    """The built-in command groups live in ragcun.cli and are added by the root group itself."""
