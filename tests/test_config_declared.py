"""Each training setting is declared once, in TrainConfig's field metadata (issue 26, section 1): its help, its
``ragcun train`` flag (or none), whether a resumed run may change it. These tests hold the CLI and resume to it."""

from __future__ import annotations

from ragcun.training.config import OPTIMIZER_CHANGES, RESUMABLE_CHANGES

# The values before the settings were declared in the metadata: deriving them must not change what resume allows.
EXPECTED_OPTIMIZER = {"lr", "head_lr", "weight_decay", "max_grad_norm", "warmup", "schedule"}
EXPECTED_RESUMABLE = {"output_dir", "steps", "epochs", "save_every", "keep_checkpoints", "log_every", "eval_every",
                      "eval_data", "diagnostics_every", "show_progress", "eval_batch_size", "max_eval_queries",
                      *EXPECTED_OPTIMIZER}


def test_what_a_resumed_run_may_change_is_unchanged():
    assert set(OPTIMIZER_CHANGES) == EXPECTED_OPTIMIZER and len(OPTIMIZER_CHANGES) == len(EXPECTED_OPTIMIZER)
    assert set(RESUMABLE_CHANGES) == EXPECTED_RESUMABLE and len(RESUMABLE_CHANGES) == len(EXPECTED_RESUMABLE)
    assert isinstance(OPTIMIZER_CHANGES, tuple) and isinstance(RESUMABLE_CHANGES, tuple)


def _train_options() -> dict[str, object]:
    import click

    from ragcun.cli.train_cmd import train_command

    return {opt: p for p in train_command.params if isinstance(p, click.Option) for opt in p.opts}


def test_every_setting_has_a_train_flag_or_is_declared_flagless():
    from dataclasses import fields

    from ragcun.training.config import Setting, TrainConfig

    options = _train_options()
    flagless = []
    for f in fields(TrainConfig):
        declared = f.metadata.get("setting")
        assert isinstance(declared, Setting), f"TrainConfig.{f.name} is not declared with setting(...)"
        assert declared.help, f"TrainConfig.{f.name} has no help"
        if declared.flag is None:
            flagless.append(f.name)
            assert f"--{f.name.replace('_', '-')}" not in options, f.name
        else:
            assert declared.flag in options, f"TrainConfig.{f.name}: {declared.flag} is not in ragcun train --help"
            param = options[declared.flag]
            assert param.help.startswith(declared.help), f.name
            # the option reaches the field: named after it, or its inverted flag (--no-progress)
            assert param.name == f.name or (declared.inverted and param.name == declared.flag[2:].replace("-", "_"))
    assert sorted(flagless) == ["eval_batch_size", "settings"]  # settings: --set KIND.NAME.PARAM=VALUE


def test_the_options_follow_the_declarations():
    import click

    from ragcun.training.config import config_default

    options = _train_options()
    assert options["--steps"].type is click.INT and options["--epochs"].type is click.FLOAT
    assert options["--freeze-encoder"].is_flag and options["--gradient-checkpointing"].is_flag
    assert isinstance(options["--dtype"].type, click.Choice) and isinstance(options["--data-dir"].type, click.Path)
    assert options["--data-dir"].envvar == "RAGCUN_DATA" and options["--train-data"].metavar == "SPEC"
    assert options["--lr"].default == config_default("lr") and options["--no-progress"].default is False


def test_no_progress_turns_the_display_off():
    from ragcun.cli.options import config_flags
    from ragcun.cli.train_cmd import train_command

    args = ["--train-data", "beir:scifact:train", "--steps", "3"]
    assert "show_progress" not in config_flags(train_command.make_context("train", args))
    flags = config_flags(train_command.make_context("train", [*args, "--no-progress"]))
    assert flags["show_progress"] is False and "no_progress" not in flags


def test_the_declarations_and_the_command_line_renderer_import_no_click_torch_or_cli():
    import subprocess
    import sys

    code = ("import sys, ragcun.training.config, ragcun.training.command_line; "
            "print(sorted(m for m in ('click', 'torch', 'ragcun.cli') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- a saved run's settings back to its command line (model cards) --------------------------------------------
def test_training_command_spells_out_what_differs():
    from ragcun.training.command_line import training_command
    from ragcun.training.config import TrainConfig

    config = TrainConfig(output_dir="runs/x", train_data="beir:scifact:train", steps=10, show_progress=False,
                         max_grad_norm=None, eval_batch_size=8, freeze_encoder=True, data_dir="/data/beir",
                         encoder="hf:my model", settings={"loss": {"isotropy": {"num_slices": 256, "t_max": 3.5}},
                                                          "encoder": {"hf": {"path": "a b"}}})
    command, unflagged = training_command(config.to_dict())
    assert command == (
        "ragcun train --output-dir runs/x --train-data beir:scifact:train --data-dir /data/beir "
        "--encoder 'hf:my model' --head gaussian --distance euclidean --loss contrastive+isotropy --freeze-encoder "
        "--steps 10 --max-grad-norm 0 --no-progress --set 'encoder.hf.path=\"a b\"' "
        "--set loss.isotropy.num_slices=256 --set loss.isotropy.t_max=3.5")
    assert unflagged == {"eval_batch_size": 8}  # no flag: the card says --config gives it
    # what was trained is spelled out even at its defaults; other defaults are not
    command, unflagged = training_command({**TrainConfig().to_dict(), "unknown_key": 3})
    assert command == ("ragcun train --output-dir runs/default --train-data '' --encoder all-minilm-l6-v2 "
                       "--head gaussian --distance euclidean --loss contrastive+isotropy")
    assert unflagged == {"unknown_key": 3}


def test_training_command_gives_back_the_settings(tmp_path, monkeypatch):
    import shlex

    from ragcun.cli.train_cmd import resolve_config, train_command
    from ragcun.training.command_line import training_command
    from ragcun.training.config import TrainConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAGCUN_DATA", raising=False)
    config = TrainConfig(output_dir="runs/x", train_data="beir:scifact:train", epochs=0.5, show_progress=False,
                         max_grad_norm=None, lr=5e-5, head_lr=1e-3, warmup=100.0, schedule="cosine", dtype="bfloat16",
                         negatives=2, mine_negatives="bm25:skip=3", no_duplicate_queries=True, seed=7,
                         gradient_checkpointing=True, max_seq_length=128, eval_data="beir:nfcorpus:dev", eval_every=5,
                         settings={"loss": {"isotropy": {"num_slices": 256}}})
    command, unflagged = training_command(config.to_dict())
    assert unflagged == {}
    ctx = train_command.make_context("train", shlex.split(command)[2:])
    assert resolve_config(ctx).to_dict() == config.to_dict()
