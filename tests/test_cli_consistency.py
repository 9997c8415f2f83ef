"""The commands agree with each other and with the docs (issue 29, item 9): one type for --data-dir, one choice of
training dtypes, help for every option of preflight, one measured cost of --gradient-checkpointing."""

from __future__ import annotations

import re
from pathlib import Path

import click
import click.testing
import pytest

from ragcun.cli.root import build_cli

ROOT = Path(__file__).resolve().parents[1]


def _commands(group: click.Group, ctx: click.Context, path=()):
    for name in sorted(group.list_commands(ctx)):
        command = group.get_command(ctx, name)
        if command is None:
            continue
        if isinstance(command, click.Group):
            yield from _commands(command, click.Context(command, info_name=name, parent=ctx), (*path, name))
        else:
            yield " ".join((*path, name)), command


@pytest.fixture(scope="module")
def commands():
    root = build_cli()
    return dict(_commands(root, click.Context(root, info_name="ragcun")))


def _option(command: click.Command, flag: str) -> click.Option | None:
    return next((p for p in command.params if isinstance(p, click.Option) and flag in p.opts), None)


def test_data_dir_is_a_folder_in_every_command(commands):
    found = {name: _option(c, "--data-dir") for name, c in commands.items() if _option(c, "--data-dir")}
    assert {"train", "preflight", "sweep", "eval beir", "isotropy report", "ablation run"} <= set(found)
    for name, option in found.items():
        assert isinstance(option.type, click.Path) and not option.type.file_okay and option.type.dir_okay, name
        assert option.make_metavar(click.Context(commands[name])) == "DIRECTORY", name


def test_training_dtype_is_the_same_choice_in_train_preflight_and_sweep(commands):
    from ragcun.precision import DTYPES

    for name in ("train", "preflight", "sweep"):
        option = _option(commands[name], "--dtype")
        assert isinstance(option.type, click.Choice) and tuple(option.type.choices) == DTYPES, name
    result = click.testing.CliRunner().invoke(build_cli(), ["preflight", "--train-data", "beir:x", "--dtype", "fp8"])
    assert result.exit_code == 2
    assert "'fp8' is not one of 'auto', 'float32', 'bfloat16-autocast', 'float16', 'bfloat16'" in result.output


def test_every_preflight_option_has_help(commands):
    bare = [p.opts[0] for p in commands["preflight"].params
            if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip() and p.name != "help"]
    assert bare == []


def test_gradient_checkpointing_costs_the_measured_time_everywhere(commands):
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    measured = re.search(r"Peak memory 0\.58x for (\d\.\d+)x the training time", results).group(1)
    for name in ("train", "preflight", "sweep"):
        assert f"about {measured}x the training time" in _option(commands[name], "--gradient-checkpointing").help
    assert f"for {measured}x the training time" in (ROOT / "docs" / "training.md").read_text()
    assert f"for {measured}x the training time" in (ROOT / "scripts" / "quickstart.sh").read_text()
    for path in [ROOT / "README.md", ROOT / "scripts" / "quickstart.sh", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in path.read_text().splitlines():
            if "checkpointing" in line:
                assert not re.search(r"\b1\.[23]x the (training )?time", line), f"{path.name}: {line}"


def test_a_plugin_evaluators_data_dir_is_a_folder_too():
    from ragcun.cli.eval_cmd import evaluator_command

    class Entry:  # what the registry hands evaluator_command
        name, summary, provider = "toy", "a toy evaluator", "my-plugin"

        @staticmethod
        def load():
            class Toy:
                def __init__(self, data_dir: str | None = None, k: int = 10) -> None:
                    pass

            return Toy

    command = evaluator_command(Entry())
    option = _option(command, "--data-dir")
    assert isinstance(option.type, click.Path) and not option.type.file_okay


def test_every_dtype_the_quickstart_passes_is_one_its_command_accepts(commands):
    """Both branches of the quickstart's precision choice (native bfloat16 or not): an AVX2-only CPU once got
    `eval beir --dtype auto`, which eval beir refuses, so the README's first command failed there after training."""
    script = (ROOT / "scripts" / "quickstart.sh").read_text()
    for variable, command in (("TRAIN_DTYPE", "train"), ("EVAL_DTYPE", "eval beir")):
        values = re.findall(rf"\b{variable}=([\w-]+)", script)
        assert len(values) == 2, (variable, values)  # one per branch
        assert f'--dtype "${variable}"' in script
        choices = _option(commands[command], "--dtype").type.choices
        for value in values:
            assert value in choices, f"quickstart.sh passes {command} --dtype {value}; it accepts {choices}"
