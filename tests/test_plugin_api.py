"""``ragcun.plugin_api``: the public home of the contracts a plugin builds on, documented in docs/plugins.md
(issue 29, item 5)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

import ragcun.plugin_api as api

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def test_every_name_is_the_internal_object():
    from ragcun.distances.base import Distance
    from ragcun.embedding import Embedding
    from ragcun.hookspecs import hookimpl
    from ragcun.losses.base import Loss, LossInputs, LossOutput
    from ragcun.testing.contracts import check_distance, check_head

    assert (api.Loss, api.LossInputs, api.LossOutput, api.Distance, api.Embedding, api.hookimpl) == (
        Loss, LossInputs, LossOutput, Distance, Embedding, hookimpl)
    assert (api.check_head, api.check_distance) == (check_head, check_distance)
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    with pytest.raises(AttributeError):
        api.NoSuchThing  # noqa: B018


def test_importing_it_and_hookimpl_stays_light():
    code = ("import sys, json\nfrom ragcun.plugin_api import hookimpl, Encoder, Head\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_the_built_in_components_satisfy_the_protocols(tiny_model_dir):
    import ragcun
    from ragcun.plugins import get_registry

    model = ragcun.build_model(f"hf:{tiny_model_dir}", "gaussian", "euclidean")
    assert isinstance(model.encoder, api.Encoder) and isinstance(model.head, api.Head)
    from ragcun.components import build

    for entry in get_registry().entries("head"):
        assert isinstance(build("head", entry.name, None, in_dim=8), api.Head), entry.name
    for entry in get_registry().entries("distance"):
        assert isinstance(build("distance", entry.name, None), api.Distance), entry.name
    assert not isinstance(object(), api.Encoder) and not isinstance(object(), api.Head)


def test_the_guide_documents_every_kind_and_every_field():
    text = DOCS.read_text()
    for section in ("## The plugin API: `ragcun.plugin_api`", "## What each kind receives and returns",
                    "## A head, end to end", "## A loss", "## A distance", "## An encoder"):
        assert section in text, section
    for name in api.__all__:
        assert f"`{name}`" in text, name
    loss_section = text[text.index("## A loss"):text.index("## A distance")]
    for field in fields(api.LossInputs):
        assert f"`{field.name}`" in loss_section, field.name
    assert "DDP rule" in loss_section and "gather_with_grad" in loss_section
    # the examples import from the public module, not from internal paths
    examples = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert all("from ragcun.losses.base" not in e and "from ragcun.embedding" not in e for e in examples)
