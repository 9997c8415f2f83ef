"""How a run stops when something goes wrong: the exceptions, and where it can continue from."""

from __future__ import annotations

from pathlib import Path

from ragcun.training import checkpoint as ckpt


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped and the last good checkpoint was left intact."""


class LossFailed(ValueError):
    """A loss term raised while computing; the message names the term and the package that supplies it."""


def last_good(out_dir: Path) -> str:
    """Where a stopped run can continue from: the newest checkpoint that verifies (checksum, finite weights)."""
    good = ckpt.latest_good_checkpoint(out_dir)
    if good is None:
        return "no checkpoint had been written yet" + (" (none of the existing ones verifies)"
                                                       if ckpt.list_checkpoints(out_dir) else "")
    return (f"the last good checkpoint is {good.folder} (step {good.step}, verified); continue from it with "
            "--resume, e.g. with a lower --lr")
