"""Plugin loading through real entry points: fake distributions are written to a folder on sys.path
(importlib.metadata discovers them exactly as it discovers pip-installed ones)."""

import inspect
from pathlib import Path

import pytest
from _training_helpers import write_distribution

from ragcun import hookspecs
from ragcun.plugins import PluginHost


GOOD = """
    import ragcun

    @ragcun.hookimpl
    def register_distances(register):
        register("manhattan", "ragcun_fake_good:Manhattan", summary="L1")

    class Manhattan:
        pass
"""
BROKEN_IMPORT = "raise ImportError('numpy 99 required')\n"
MISSPELLED = """
    import ragcun

    @ragcun.hookimpl
    def register_lossses(register):
        register("typo", "m:C")
"""
RAISES = """
    import ragcun

    @ragcun.hookimpl
    def register_heads(register):
        register("half-done", "m:C")
        raise RuntimeError("boom")
"""
DUPLICATE = """
    import ragcun

    @ragcun.hookimpl
    def register_heads(register):
        register("gaussian", "ragcun_fake_dup:C")
"""


@pytest.fixture()
def fake_plugins(tmp_path, monkeypatch):
    write_distribution(tmp_path, "ragcun-fake-good", "ragcun_fake_good", GOOD, entry_name="good")
    write_distribution(tmp_path, "ragcun-fake-broken", "ragcun_fake_broken", BROKEN_IMPORT, entry_name="broken")
    write_distribution(tmp_path, "ragcun-fake-typo", "ragcun_fake_typo", MISSPELLED, entry_name="typo")
    write_distribution(tmp_path, "ragcun-fake-raises", "ragcun_fake_raises", RAISES, entry_name="raises")
    write_distribution(tmp_path, "ragcun-fake-dup", "ragcun_fake_dup", DUPLICATE, entry_name="dup")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("RAGCUN_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("RAGCUN_DISABLE_PLUGINS", raising=False)
    return tmp_path


def test_broken_plugins_are_isolated_and_reported(fake_plugins):
    host = PluginHost()
    records = {r.name: r for r in host.plugin_records()}
    assert records["good"].error is None
    assert host.registry.get("distance", "manhattan").provider == "ragcun-fake-good"
    assert "import failed" in records["broken"].error and "numpy 99" in records["broken"].error
    assert "unknown hook" in records["typo"].error and "register_lossses" in records["typo"].error
    assert "boom" in records["raises"].error
    # what a failing plugin registered before raising is withdrawn
    assert ("head", "half-done") not in host.registry
    assert "registered twice" in records["dup"].error
    # the built-ins and the healthy plugin still work
    assert host.registry.get("head", "gaussian").provider == "ragcun"


def test_allow_list(fake_plugins, monkeypatch):
    monkeypatch.setenv("RAGCUN_LOAD_PLUGINS", "good")
    host = PluginHost()
    names = {r.name for r in host.plugin_records() if not r.builtin}
    assert names == {"good"}


def test_empty_allow_list_loads_no_third_party_plugin(fake_plugins, monkeypatch):
    monkeypatch.setenv("RAGCUN_LOAD_PLUGINS", "")
    host = PluginHost()
    assert all(r.builtin for r in host.plugin_records())
    assert ("head", "gaussian") in host.registry


def test_block_list_by_entry_point_or_distribution(fake_plugins, monkeypatch):
    monkeypatch.setenv("RAGCUN_DISABLE_PLUGINS", "broken, ragcun-fake-typo,raises,dup")
    host = PluginHost()
    records = {r.name: r for r in host.plugin_records() if not r.builtin}
    assert set(records) >= {"good"} and not {"broken", "typo", "raises", "dup"} & set(records)
    assert all(r.error is None for r in records.values())


@pytest.mark.needs_plugins("ragcun-mlp")  # the installed example plugin
def test_example_plugin_loads_through_its_installed_entry_point(monkeypatch):
    monkeypatch.delenv("RAGCUN_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("RAGCUN_DISABLE_PLUGINS", raising=False)
    host = PluginHost()
    record = {r.name: r for r in host.plugin_records()}["mlp"]
    assert record.distribution == "ragcun-mlp" and record.error is None
    assert set(record.hooks) == {"register_heads", "register_evaluators", "register_commands"}
    assert host.registry.get("head", "mlp").provider == "ragcun-mlp"


def test_every_hookspec_is_documented_in_the_plugin_guide():
    """docs/plugins.md's hook table has a row for each hookspec, with the hook's own argument names, and each
    kind of component a hook registers has its section in the guide: a hook added without docs fails here."""
    import re

    specs = {name: f for name, f in inspect.getmembers(hookspecs, inspect.isfunction)
             if name.startswith("register_")}
    guide = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    rows = dict(re.findall(r"^\| `(register_\w+)\(([^)]*)\)` \|", guide, flags=re.M))
    assert set(rows) == set(specs), "docs/plugins.md's hook table and ragcun.hookspecs list different hooks"
    for name, f in specs.items():
        assert rows[name] == ", ".join(inspect.signature(f).parameters), f"{name}: the table shows ({rows[name]})"
        assert len(inspect.getdoc(f) or "") > 40, f"{name} needs a docstring saying what plugins register"
    for kind in ("head", "loss", "distance", "encoder"):
        assert re.search(rf"^## An? {kind}\b", guide, flags=re.M), f"docs/plugins.md has no section on a {kind}"


EXITS = "import sys\nsys.exit('no GPU here')\n"
BASE_RAISES = """
    import ragcun

    @ragcun.hookimpl
    def register_heads(register):
        register("exit-head", "m:C")
        raise SystemExit(3)
"""
HALF_COMMANDS = """
    import click
    import ragcun

    @ragcun.hookimpl
    def register_commands(cli):
        @cli.command("half-command")
        def half():
            pass
        raise RuntimeError("second command broke")
"""
FAILS_THEN_COMMANDS = """
    import click
    import ragcun

    @ragcun.hookimpl
    def register_distances(register):
        raise RuntimeError("bad registration")

    @ragcun.hookimpl
    def register_commands(cli):
        @cli.command("from-a-failed-plugin")
        def cmd():
            pass
"""


def test_a_plugin_calling_sys_exit_or_raising_baseexception_is_isolated(tmp_path, monkeypatch):
    """Issue 14 point 8: sys.exit on import, SystemExit while registering: reported, everything else works."""
    import click

    write_distribution(tmp_path, "ragcun-fake-exits", "ragcun_fake_exits", EXITS, entry_name="exits")
    write_distribution(tmp_path, "ragcun-fake-base", "ragcun_fake_base", BASE_RAISES, entry_name="base")
    write_distribution(tmp_path, "ragcun-fake-half", "ragcun_fake_half", HALF_COMMANDS, entry_name="half")
    write_distribution(tmp_path, "ragcun-fake-failcmd", "ragcun_fake_failcmd", FAILS_THEN_COMMANDS,
                       entry_name="failcmd")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("RAGCUN_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("RAGCUN_DISABLE_PLUGINS", raising=False)
    host = PluginHost()
    cli = click.Group("ragcun")
    host.add_commands(cli)
    records = {r.name: r for r in host.plugin_records()}
    assert "import failed: SystemExit: no GPU here" in records["exits"].error
    assert "SystemExit" in records["base"].error and ("head", "exit-head") not in host.registry
    assert "second command broke" in records["half"].error and "half-command" not in cli.commands
    assert "bad registration" in records["failcmd"].error and "from-a-failed-plugin" not in cli.commands
    assert host.registry.get("head", "gaussian").provider == "ragcun"


def test_help_survives_a_plugin_that_exits(tmp_path):
    import os
    import subprocess
    import sys

    write_distribution(tmp_path, "ragcun-fake-exits", "ragcun_fake_exits", EXITS, entry_name="exits")
    env = {**os.environ, "PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("RAGCUN_LOAD_PLUGINS", None)
    out = subprocess.run([sys.executable, "-m", "ragcun", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0 and "train" in out.stdout, out.stderr
    out = subprocess.run([sys.executable, "-m", "ragcun", "plugins", "--format", "json"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "SystemExit: no GPU here" in out.stdout, out.stdout + out.stderr
