"""One source of training defaults (TrainConfig) and one precedence (ragcun.training.config.build_config):
command-line flags > --set settings > the TOML file > a resumed run > the dataclass defaults; and every command
that takes --set rejects a setting it would ignore, naming the command and the key (exit 1, no traceback)."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields

import click
import pytest
from click.testing import CliRunner

from ragcun.cli.root import build_cli
from ragcun.training.config import TrainConfig, build_config, config_default

BASE = {"train_data": "x.jsonl", "steps": 1}


def invoke(*args):
    return CliRunner().invoke(build_cli(), list(map(str, args)), catch_exceptions=False)


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture()
def toml(tmp_path):
    def write(text: str):
        path = tmp_path / "run.toml"
        path.write_text(text)
        return path

    return write


# -- the dataclass is the one source of defaults -------------------------------------------------------------
def test_config_default_reads_the_dataclass():
    for f in fields(TrainConfig):
        expected = f.default if f.default is not MISSING else f.default_factory()
        assert config_default(f.name) == expected
    with pytest.raises(KeyError, match="no field 'nope'"):
        config_default("nope")


def test_nothing_given_is_the_dataclass_defaults():
    config = build_config(flags=BASE)
    assert config.to_dict() == TrainConfig(**BASE).to_dict()


@pytest.mark.parametrize("command", ["train", "sweep", "preflight"])
def test_options_take_their_defaults_from_the_dataclass(command):
    cli = build_cli()
    cmd = cli.get_command(click.Context(cli), command)
    own = {"preflight": {"output_dir", "steps"}}.get(command, set())  # preflight's own: the disk, the steps tried
    names = {f.name for f in fields(TrainConfig)}
    checked = 0
    for param in cmd.params:
        if param.name in names and param.name not in own and not param.required:
            assert param.default == config_default(param.name), param.name
            checked += 1
    assert checked >= 5


def test_train_help_shows_the_dataclass_defaults():
    result = invoke("train", "--help")
    assert result.exit_code == 0, result.output
    text = one_line(result.output[result.output.index("Options:"):])
    for flag, field in [("--lr", "lr"), ("--batch-size", "batch_size"), ("--warmup", "warmup"),
                        ("--seed", "seed"), ("--head", "head"), ("--loss", "loss"), ("--dtype", "dtype"),
                        ("--max-grad-norm", "max_grad_norm"), ("--shuffle-buffer", "shuffle_buffer")]:
        start = text.index(flag + " ")
        entry = text[start:text.index(" --", start + len(flag))]  # up to the next option
        assert f"[default: {config_default(field)}]" in entry, entry


# -- the precedence -------------------------------------------------------------------------------------------
def test_toml_beats_the_defaults_and_flags_beat_toml(toml):
    path = toml('[train]\nlr = 1e-3\nbatch-size = 8\nwarmup = 5\n')
    config = build_config(config_file=path, flags=BASE)
    assert (config.lr, config.batch_size, config.warmup) == (1e-3, 8, 5)
    assert config.weight_decay == config_default("weight_decay")  # not in the file: the default
    config = build_config(config_file=path, flags={**BASE, "lr": 5e-4, "batch_size": 4})
    assert (config.lr, config.batch_size, config.warmup) == (5e-4, 4, 5)


def test_set_beats_toml_for_component_settings(toml):
    path = toml('[train]\nlr = 1e-3\n\n[loss.isotropy]\nnum_slices = 32\n\n[head.gaussian]\nout_dim = 8\n')
    config = build_config(config_file=path, flags={**BASE, "lr": 5e-4},
                          settings=["loss.isotropy.num_slices=64"])
    assert config.settings == {"loss": {"isotropy": {"num_slices": 64}}, "head": {"gaussian": {"out_dim": 8}}}
    assert config.lr == 5e-4


def test_a_flag_beats_a_set_setting_of_the_same_parameter():
    """``--encoder hf:A`` and ``--set encoder.hf.path=B``: the setting is kept, the spec's argument wins."""
    from ragcun.components import term_config
    from ragcun.plugins import get_registry
    from ragcun.spec import parse_spec

    config = build_config(flags={**BASE, "encoder": "hf:/models/a"}, settings=["encoder.hf.path=/models/b"])
    assert config.settings == {"encoder": {"hf": {"path": "/models/b"}}}
    term = parse_spec(config.encoder, composable=False).single
    assert term_config("encoder", term, get_registry().get("encoder", "hf"), config.settings)["path"] == "/models/a"


def test_resumed_run_beneath_toml_beneath_flags(tmp_path, toml):
    run = tmp_path / "run"
    run.mkdir()
    TrainConfig(output_dir=str(run), train_data="x.jsonl", steps=2, lr=1e-4, seed=7, batch_size=16).save(run)
    config = build_config(flags={"output_dir": str(run), "steps": 4}, resume=True)
    assert (config.steps, config.lr, config.seed, config.batch_size) == (4, 1e-4, 7, 16)
    config = build_config(config_file=toml('[train]\nseed = 9\nlr = 3e-4\n'), flags={"output_dir": str(run),
                                                                                    "lr": 2e-4}, resume=True)
    assert (config.steps, config.lr, config.seed) == (2, 2e-4, 9)
    with pytest.raises(ValueError, match="--resume needs --output-dir"):
        build_config(resume=True)


def test_training_dtype_is_kept_as_given_and_its_two_bfloat16_spellings_resume_each_other(tmp_path):
    """bfloat16 (an old run's train_config.json) and bfloat16-autocast are one precision: a resume with either is
    no change; each config records the name it was given; bfloat16-weights is refused naming --dtype."""
    old, new = tmp_path / "old", tmp_path / "new"
    for run, dtype in ((old, "bfloat16"), (new, "bfloat16-autocast")):
        run.mkdir()
        TrainConfig(output_dir=str(run), train_data="x.jsonl", steps=2, dtype=dtype).save(run)
        assert json.loads((run / "train_config.json").read_text())["dtype"] == dtype
    assert build_config(flags={"output_dir": str(old)}, resume=True).dtype == "bfloat16"  # not rewritten
    resumed = build_config(flags={"output_dir": str(old), "dtype": "bfloat16-autocast"}, resume=True)
    assert TrainConfig.load(old).differences(resumed) == {}
    assert TrainConfig.load(new).differences(TrainConfig.load(old)) == {}
    assert set(TrainConfig.load(old).differences(build_config(flags={"output_dir": str(old), "dtype": "float32"},
                                                              resume=True))) == {"dtype"}
    with pytest.raises(ValueError, match=r"--dtype bfloat16-weights: training never casts the weights"):
        TrainConfig(output_dir=str(tmp_path / "w"), train_data="x.jsonl", steps=2, dtype="bfloat16-weights").validate()


def test_max_grad_norm_zero_is_no_clipping(toml):
    assert build_config(flags={**BASE, "max_grad_norm": 0}).max_grad_norm is None
    assert build_config(config_file=toml('[train]\nmax-grad-norm = 0\n'), flags=BASE).max_grad_norm is None


def test_json_config_file(tmp_path):
    path = tmp_path / "train_config.json"
    path.write_text(json.dumps({**TrainConfig(**BASE, lr=1e-3).to_dict(), "seed": 3}))
    config = build_config(config_file=path, flags={"seed": 4})
    assert (config.lr, config.seed) == (1e-3, 4)
    path.write_text("{nope")
    with pytest.raises(ValueError, match="train_config.json: not valid JSON"):
        build_config(config_file=path)


@pytest.mark.parametrize("text, message", [
    ('[train]\nlrr = 1e-3\n', "run.toml [train]: unknown training setting(s) lrr (did you mean lr?)"),
    ('[train]\nlr = "fast"\n', "run.toml [train]: lr must be a number, got 'fast'"),
    ('[train]\nbatch-size = 2.5\n', "run.toml [train]: batch_size must be an integer"),
    ('[train]\nbatch-size = 0\n', "--batch-size must be a positive integer, got 0"),
    ('[loss.isotropy]\nnum_slicez = 8\n', "run.toml [loss.isotropy]: unknown setting loss.isotropy.num_slicez"),
    ('[loss.isotropy]\nnum_slices = 1.5\n', "run.toml [loss.isotropy]: loss.isotropy.num_slices must be an integer"),
    ('[head.linear]\nout_dim = 8\n', "run.toml [head.linear]: this run does not use head 'linear'"),
    ('[los.isotropy]\nnum_slices = 8\n', "did you mean [loss.isotropy]?"),
    ('[train\nlr = 1\n', "run.toml: not valid TOML"),
])
def test_a_bad_toml_key_or_value_names_the_file_and_key(toml, text, message):
    with pytest.raises(ValueError) as err:
        build_config(config_file=toml(text), flags=BASE)
    assert message in str(err.value)


def test_bad_flags():
    with pytest.raises(ValueError, match="unknown training setting"):
        build_config(flags={**BASE, "lrr": 1})
    with pytest.raises(ValueError, match="settings="):
        build_config(flags={**BASE, "settings": {}})
    with pytest.raises(ValueError, match="--lr must be positive"):
        build_config(flags={**BASE, "lr": -1.0})


def test_cli_flags_given_beat_the_toml_and_defaults_do_not(toml):
    """Through click: an option left at its (dataclass) default does not override the file; one given does."""
    from ragcun.cli.train_cmd import resolve_config, train_command

    path = toml('[train]\ntrain-data = "x.jsonl"\nsteps = 3\nlr = 1e-3\nbatch-size = 8\n\n'
                '[loss.isotropy]\nnum_slices = 32\n')
    ctx = train_command.make_context("train", ["--config", str(path), "--batch-size", "4", "--set",
                                               "loss.isotropy.num_slices=64", "--no-progress"])
    config = resolve_config(ctx)
    assert ctx.params["lr"] == config_default("lr")  # click's value is the default ...
    assert config.lr == 1e-3  # ... so the file's wins
    assert config.batch_size == 4 and config.steps == 3 and config.show_progress is False
    assert config.settings == {"loss": {"isotropy": {"num_slices": 64}}}


def test_sweep_and_preflight_build_through_build_config(monkeypatch, tmp_path):
    import ragcun.ablation.sweep as sweep_mod
    import ragcun.workflows.preflight as preflight_mod

    seen = {}
    monkeypatch.setattr(sweep_mod, "run_sweep",
                        lambda base, eval_data, **kw: (seen.setdefault("sweep", base), tmp_path / "s.toml", [])[1:])
    monkeypatch.setattr(preflight_mod, "preflight", lambda config, **kw: seen.setdefault("preflight", config) and [])
    monkeypatch.delenv("RAGCUN_DATA", raising=False)
    result = invoke("sweep", "--train-data", "x.jsonl", "--eval-data", "beir:scifact:test", "--output-dir",
                    tmp_path / "s", "--steps", "2", "--lr", "1e-4", "--runs", "isotropy",
                    "--set", "loss.isotropy.num_slices=16", "--format", "json")
    assert result.exit_code == 0, result.output
    config = seen["sweep"]
    expected = build_config(flags={"train_data": "x.jsonl", "output_dir": str(tmp_path / "s"), "steps": 2,
                                   "lr": 1e-4}, settings=["loss.isotropy.num_slices=16"])
    assert {k: v for k, v in config.to_dict().items() if k not in ("output_dir", "loss")} == \
        {k: v for k, v in expected.to_dict().items() if k not in ("output_dir", "loss")}
    result = invoke("preflight", "--train-data", "x.jsonl", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert seen["preflight"].to_dict() == build_config(flags={"train_data": "x.jsonl", "output_dir": "runs",
                                                              "steps": 3, "batch_size": 4,
                                                              "show_progress": False}).to_dict()


# -- --set settings a command would ignore --------------------------------------------------------------------
def _checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "ragcun.json").write_text("{}")  # is_checkpoint only looks for the file; nothing is loaded
    return folder


@pytest.mark.parametrize("command, args", [
    ("ragcun train", ["train", "--train-data", "x.jsonl", "--steps", "1", "--output-dir", "{tmp}/out"]),
    ("ragcun sweep", ["sweep", "--train-data", "x.jsonl", "--eval-data", "beir:scifact:test", "--steps", "1",
                      "--output-dir", "{tmp}/out"]),
    ("ragcun preflight", ["preflight", "--train-data", "x.jsonl", "--output-dir", "{tmp}/out"]),
    ("ragcun encode", ["encode", "--model", "hf:{tmp}/no-model", "some text"]),
    ("ragcun eval beir", ["eval", "beir", "--model", "hf:{tmp}/no-model", "--datasets", "nope",
                          "--no-download"]),
    ("ragcun isotropy report", ["isotropy", "report", "--model", "hf:{tmp}/no-model", "--dataset", "nope",
                                "--data-dir", "{tmp}", "--output-dir", "{tmp}/out"]),
    ("ragcun data score", ["data", "score", "--teacher", "hf:{tmp}/no-model", "--train-data", "x.jsonl",
                           "--negatives", "1", "--output", "{tmp}/out/scored.jsonl"]),
])
@pytest.mark.parametrize("setting, message", [
    ("head.linear.out_dim=10", "this run does not use head 'linear'"),
    ("loss.uniformity.t=2", "this run does not use loss 'uniformity'"),
    ("head.gausian.out_dim=8", "unknown head 'gausian'; did you mean 'gaussian'?"),
])
def test_every_command_with_set_rejects_an_ignored_setting(tmp_path, command, args, setting, message):
    result = invoke(*[a.replace("{tmp}", str(tmp_path)) for a in args], "--set", setting)
    assert result.exit_code == 1, result.output
    text = one_line(result.output)
    assert f"{command} --set {setting}:" in text and message in text, text
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # nothing ran


def test_the_commands_with_set_are_the_ones_tested():
    """A built-in command that gains --set must join the test above (a plugin's commands are its own)."""
    cli = build_cli()
    ctx = click.Context(cli)

    def walk(group, prefix):
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            if isinstance(cmd, click.Group):
                yield from walk(cmd, f"{prefix} {name}")
            elif (cmd.callback.__module__.startswith("ragcun.")
                  and any(isinstance(p, click.Option) and "--set" in p.opts for p in cmd.params)):
                yield f"{prefix} {name}"

    assert set(walk(cli, "ragcun")) == {"ragcun train", "ragcun sweep", "ragcun preflight", "ragcun encode",
                                        "ragcun eval beir", "ragcun isotropy report", "ragcun data score"}


def test_sweep_accepts_a_setting_of_any_of_its_runs_and_preflight_follows_its_loss(tmp_path):
    # the sweep's runs all use isotropy (the baseline with weight 0): its settings are in use
    from ragcun.ablation.sweep import arm_configs

    runs = lambda c: arm_configs(c, 1.0, ["baseline"]).values()  # noqa: E731
    config = build_config(flags={**BASE, "output_dir": str(tmp_path)}, settings=["loss.isotropy.num_slices=16"],
                          command="ragcun sweep", expand=runs)
    assert config.settings == {"loss": {"isotropy": {"num_slices": 16}}}
    result = invoke("preflight", "--train-data", "x.jsonl", "--loss", "contrastive", "--set",
                    "loss.isotropy.num_slices=8")
    assert result.exit_code == 1
    assert "ragcun preflight --set loss.isotropy.num_slices=8: this run does not use loss 'isotropy'" in \
        one_line(result.output)


def test_model_commands_know_what_each_model_builds(tmp_path):
    from ragcun.resolve import components_built_for

    ckpt = _checkpoint(tmp_path)
    in_use, checkpoints = components_built_for([f"hf:{tmp_path}/m"])
    assert in_use == {"encoder": ["hf"], "head": ["identity"], "distance": ["cosine", "dot", "euclidean"]}
    assert checkpoints == []
    in_use, _ = components_built_for(["all-minilm-l6-v2+gaussian"])
    assert in_use == {"encoder": ["all-minilm-l6-v2"], "head": ["gaussian"], "distance": ["euclidean"]}
    in_use, _ = components_built_for(["minilm"], distance="l2")
    assert in_use == {"distance": ["euclidean"], "encoder": ["all-minilm-l6-v2"], "head": ["identity"]}
    in_use, checkpoints = components_built_for([str(ckpt)])
    assert in_use == {} and checkpoints == [str(ckpt)]
    in_use, _ = components_built_for([str(ckpt)], distance="cosine")
    assert in_use == {"distance": ["cosine"]}


def test_a_checkpoint_takes_no_component_settings_but_its_distance_override(tmp_path):
    from ragcun.cli.options import model_settings

    ckpt = _checkpoint(tmp_path)
    result = invoke("encode", "--model", ckpt, "--set", "head.gaussian.out_dim=8", "x")
    assert result.exit_code == 1
    text = one_line(result.output)
    assert "ragcun encode --set head.gaussian.out_dim=8" in text and "a ragcun checkpoint" in text, text
    settings = model_settings("ragcun encode", ["distance.cosine.eps=1e-9"], [str(ckpt)], distance="cosine")
    assert settings["distance"] == {"cosine": {"eps": 1e-9}}
    # a fresh head takes its settings
    settings = model_settings("ragcun isotropy report", ["head.gaussian.out_dim=8"],
                              ["all-minilm-l6-v2", "all-minilm-l6-v2+gaussian"])
    assert settings["head"] == {"gaussian": {"out_dim": 8}}


def test_malformed_set_fails_in_every_model_command(tmp_path):
    for args in (["encode", "--model", f"hf:{tmp_path}", "x"],
                 ["eval", "beir", "--model", f"hf:{tmp_path}", "--datasets", "nope", "--no-download"]):
        result = invoke(*args, "--set", "heads.gaussian")
        assert result.exit_code == 1 and "KIND.NAME.PARAM=VALUE" in result.output, result.output
        assert "Traceback" not in result.output
