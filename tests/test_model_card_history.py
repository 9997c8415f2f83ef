"""The exported model card tells the truth about how the run was trained (issue 29, item 10): a run resumed with
changed settings is not repeated exactly by ``--config``, and a calibrated ``init_scale: "auto"`` shows the value
the model holds."""

from __future__ import annotations

import json
from pathlib import Path

import ragcun
from ragcun.model import EmbeddingModel
from ragcun.training.config import TrainConfig


def _run(tiny_model_dir: Path, folder: Path, history: list[dict], settings: dict | None = None) -> Path:
    model = EmbeddingModel.build(f"hf:{tiny_model_dir}", "gaussian", "euclidean",
                                 {"head": {"gaussian": {"out_dim": 16, **(settings or {})}}})
    if model.head.init_scale == "auto":
        model.head.init_scale = 24.13  # what training's calibration records in the head (ragcun.training.calibration)
    model.save_pretrained(folder)
    TrainConfig(output_dir=str(folder), train_data="beir:scifact:train", encoder=f"hf:{tiny_model_dir}", steps=8,
                batch_size=8, show_progress=False,
                settings={"head": {"gaussian": {"out_dim": 16, **(settings or {})}}}).save(folder)
    (folder / "config_history.json").write_text(json.dumps(history))
    return folder


def _card(run: Path, tmp_path: Path) -> str:
    return (ragcun.export(run, tmp_path / f"{run.name}-export").path / "README.md").read_text()


def test_a_run_resumed_with_other_steps_is_not_repeated_exactly(tiny_model_dir, tmp_path):
    history = [{"event": "start", "step": 0},
               {"event": "resume", "step": 4, "checkpoint": "step-00000004",
                "changes": {"steps": {"from": 4, "to": 8}}}]
    card = " ".join(_card(_run(tiny_model_dir, tmp_path / "resumed", history), tmp_path).split())
    assert "resumed 1 time(s), with changed settings" in card and "at step 4: `steps` 4 -> 8" in card
    assert "does **not** repeat this run exactly" in card and "repeats the run exactly" not in card


def test_a_run_never_resumed_is_repeated_exactly(tiny_model_dir, tmp_path):
    card = " ".join(_card(_run(tiny_model_dir, tmp_path / "plain", [{"event": "start", "step": 0}]), tmp_path).split())
    assert "`ragcun train --config ragcun_train_config.json` repeats the run exactly" in card
    assert "The run was resumed" not in card


def test_a_resume_without_changes_still_repeats_exactly(tiny_model_dir, tmp_path):
    history = [{"event": "start", "step": 0}, {"event": "resume", "step": 4, "changes": {}}]
    card = " ".join(_card(_run(tiny_model_dir, tmp_path / "same", history), tmp_path).split())
    assert "resumed 1 time(s), each with the same settings" in card and "repeats the run exactly" in card


def test_the_calibrated_init_scale_is_shown(tiny_model_dir, tmp_path):
    card = " ".join(_card(_run(tiny_model_dir, tmp_path / "auto", []), tmp_path).split())
    assert '`head.gaussian.init_scale` is `"auto"` in these settings' in card and "**24.13**" in card
    fixed = " ".join(_card(_run(tiny_model_dir, tmp_path / "fixed", [], {"init_scale": 2.0}), tmp_path).split())
    assert "training calibrated the head" not in fixed  # a number the user chose needs no explanation
