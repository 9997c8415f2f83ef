"""Training checkpoints: written atomically, the last few kept, enough state to continue exactly.

Layout::

    OUTPUT_DIR/checkpoints/step-00000500/
        model/          EmbeddingModel.save_pretrained (safetensors + ragcun.json); loadable by `ragcun eval`
        trainer.pt      optimizer, scheduler, grad scaler, the loss's own state (e.g. a learnable
                        temperature), every rank's RNG states (tensors and ints only:
                        loaded with ``weights_only=True``, so nothing is unpickled)
        state.json      step, data position (epoch, examples consumed), last loss; for people and tools

A checkpoint is first written to ``checkpoints/.tmp-step-…`` and renamed into place, so a folder named
``step-*`` is always complete; a crash mid-write leaves only a ``.tmp-*`` folder, which is ignored and
cleaned up by the next save.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINTS = "checkpoints"
TRAINER_FILE = "trainer.pt"
STATE_FILE = "state.json"
MODEL_FOLDER = "model"


@dataclass
class Checkpoint:
    folder: Path
    step: int


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's RNG states (torch CPU, CUDA, numpy, python) as tensors, lists and ints."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                       int(np_state[3]), float(np_state[4])],
             "python": list(random.getstate()[1]) + [random.getstate()[0]],
             "python_gauss": random.getstate()[2]}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    *internal, version = state["python"]
    random.setstate((version, tuple(internal), state["python_gauss"]))
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def step_folder_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Checkpoint]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for folder in root.glob("step-*"):
        try:
            step = int(folder.name.split("-", 1)[1])
        except ValueError:
            continue
        if (folder / TRAINER_FILE).is_file() and (folder / MODEL_FOLDER / "ragcun.json").is_file():
            found.append(Checkpoint(folder, step))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(output_dir: str | Path) -> Checkpoint | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(output_dir: str | Path, step: int, *, model, optimizer, scheduler, scaler, rng_states: list,
                    data_position: dict[str, int], loss_state: dict | None = None,
                    extra: dict[str, Any] | None = None, keep: int = 2) -> Path:
    """Write ``checkpoints/step-STEP`` atomically and delete all but the newest ``keep`` checkpoints."""
    root = Path(output_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # leftovers of a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)
    final = root / step_folder_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        model.save_pretrained(tmp / MODEL_FOLDER)
        trainer = {"step": int(step), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "scaler": scaler.state_dict() if scaler is not None else None,
                   "rng": rng_states, "data": dict(data_position), "loss": loss_state or None}
        torch.save(trainer, tmp / TRAINER_FILE)
        state = {"step": int(step), "data": dict(data_position), **(extra or {})}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        _fsync_tree(tmp)
        if final.exists():  # the same step saved again (e.g. interrupted right after a periodic save)
            old = root / f".tmp-old-{final.name}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old.folder, ignore_errors=True)
    return final


def load_trainer_state(checkpoint: Checkpoint, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = checkpoint.folder / TRAINER_FILE
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise ValueError(f"{path}: cannot read the training state ({type(exc).__name__}: {exc})") from None


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
