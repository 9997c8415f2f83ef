"""What a run says while it trains: metrics.jsonl (+ TensorBoard) and the live display (rank 0 only)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from ragcun.files import write_text_atomic

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """JSON lines (always) and TensorBoard (when installed), written by rank 0 only."""

    def __init__(self, folder: Path, enabled: bool, resume_step: int | None) -> None:
        self.enabled = enabled
        self.path = folder / METRICS_FILE
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():  # drop records the resumed run will redo
            kept = [line for line, record in self._records() if record.get("step", 0) <= resume_step]
            # written aside and renamed: a kill at any moment leaves the old file or the new one, never less
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(folder / "tensorboard"))
        except Exception:  # tensorboard is optional
            self.tb = None

    def _records(self) -> list[tuple[str, dict]]:
        return read_metrics(self.path, hint="fix or remove that line, then --resume again")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps(record, sort_keys=True) + "\n"
        try:  # appended without following a symbolic link someone left in the run folder
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            with os.fdopen(fd, "a") as fh:
                fh.write(line)
        except OSError as exc:
            from ragcun.files import output_error

            if exc.errno == errno.ELOOP:
                raise ValueError(f"{self.path} is a symbolic link; a run never writes through links it did not "
                                 "make") from None
            raise (output_error(exc, self.path, then="; the checkpoints written so far are intact") or exc) from None
        if self.tb is not None:
            step = record.get("step", 0)
            for key, value in _flatten(record).items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
        else:
            out[name] = value
    return out


class LiveDisplay:
    """A rich progress line on stderr (rank 0): step, loss terms, lr, samples/s, ETA. Plain lines when stderr
    is not a terminal (CI logs)."""

    def __init__(self, enabled: bool, total: int, start: int) -> None:
        self.enabled = enabled
        self.progress = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from ragcun.console import stderr

        self.console = stderr
        if stderr.is_terminal:
            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.description}"), console=stderr)
            self.progress.start()
            self.task = self.progress.add_task("", total=total, completed=start)

    def update(self, step: int, text: str, log_line: bool) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.update(self.task, completed=step, description=text)
        elif log_line:
            self.console.print(f"step {step}: {text}", highlight=False, soft_wrap=True)

    def print(self, text: str) -> None:
        if self.enabled:
            (self.progress.console if self.progress is not None else self.console).print(text, highlight=False,
                                                                                         soft_wrap=True)

    def warn(self, text: str) -> None:
        """Shown even with --no-progress: a warning must not depend on the progress display."""
        from ragcun.console import stderr

        (self.progress.console if self.progress is not None else stderr).print(
            f"[yellow]warning:[/yellow] {text}", highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def format_terms(loss: float, terms: dict[str, float], lr: float, rate: float, eta_s: float | None) -> str:
    parts = [f"loss {loss:.4f}"] + [f"{k} {v:.4f}" for k, v in terms.items()]
    parts += [f"lr {lr:.2e}", f"{rate:.1f} pairs/s"]
    if eta_s is not None:
        parts.append(f"ETA {int(eta_s // 60)}m{int(eta_s % 60):02d}s")
    return "  ".join(parts)


def read_metrics(path: Path, hint: str = "fix or remove that line") -> list[tuple[str, dict]]:
    """A metrics.jsonl's (line, record) pairs. A torn last line (a kill mid-write) is dropped; any other line
    that is not a JSON object is an error naming the file and line (``hint`` says what to do)."""
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if number == len(lines):  # the record being written when the run was killed
                continue
            raise ValueError(f"{path} line {number}: not a metrics record ({exc}); {hint}") from None
        out.append((line, record))
    return out
