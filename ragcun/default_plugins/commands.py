from ragcun.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    """The built-in commands, added through the same hook as a third party's (each module stays import-light:
    torch and transformers are imported inside the command functions)."""
    from ragcun.cli import (ablation_cmd, compare_cmd, data_cmd, encode_cmd, eval_cmd, export_cmd, isotropy_cmd,
                            list_cmd, plugins_cmd, preflight_cmd, sweep_cmd, train_cmd)

    for module in (list_cmd, plugins_cmd, encode_cmd, train_cmd, sweep_cmd, ablation_cmd, preflight_cmd, data_cmd,
                   eval_cmd, compare_cmd, isotropy_cmd, export_cmd):
        module.add_to(cli)
