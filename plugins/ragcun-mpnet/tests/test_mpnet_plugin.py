"""The plugin as ragcun sees it: registration, provider, listing, import cost (no real weights needed)."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from ragcun.cli.root import build_cli
from ragcun.plugins import get_registry


def test_encoder_is_registered_by_its_distribution():
    entry = get_registry().get("encoder", "all-mpnet-base-v2")
    assert entry.provider == "ragcun-mpnet"
    assert entry.target_path == "ragcun_mpnet.encoder:AllMpnetBaseV2"  # lazy: see the import test below
    assert get_registry().get("encoder", "mpnet").name == "all-mpnet-base-v2"


def test_list_and_plugins_show_it_with_its_provider():
    result = CliRunner().invoke(build_cli(), ["list", "encoders", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["all-mpnet-base-v2"]["provider"] == "ragcun-mpnet"
    result = CliRunner().invoke(build_cli(), ["plugins", "--format", "json"])
    assert result.exit_code == 0, result.output
    plugins = {r["distribution"]: r for r in json.loads(result.output)}
    assert plugins["ragcun-mpnet"]["status"] == "ok"
    assert plugins["ragcun-mpnet"]["components"] == ["encoder:all-mpnet-base-v2"]


def test_listing_imports_neither_torch_nor_the_encoder():
    code = ("import sys; sys.argv = ['ragcun', 'list', 'encoders']\n"
            "from ragcun.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "import json; print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "ragcun_mpnet.plugin" in modules
    assert not {"torch", "transformers", "ragcun_mpnet.encoder"} & modules


def test_with_a_path_the_encoder_never_touches_the_parts(tiny_model_dir, monkeypatch):
    """A checkpoint passes its own encoder/ folder: no assembly, no parts needed."""
    import ragcun_mpnet.encoder as enc

    def no():
        raise AssertionError("must not assemble when given a path")

    monkeypatch.setattr(enc, "model_path", no)
    encoder = enc.AllMpnetBaseV2(path=str(tiny_model_dir))
    assert encoder.get_config()["path"] == str(tiny_model_dir)


def test_the_config_of_the_assembled_copy_is_portable(tiny_model_dir, monkeypatch):
    import ragcun_mpnet.encoder as enc

    monkeypatch.setattr(enc, "model_path", lambda: tiny_model_dir)
    monkeypatch.setattr(enc, "default_model_dir", lambda: tiny_model_dir)
    config = enc.AllMpnetBaseV2().get_config()
    assert "path" not in config and config["pooling"] == "mean"
