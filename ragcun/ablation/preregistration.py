"""The pre-registration of a plan's primary analysis: its family's hash, recorded before the first run.

A plan's ``[primary]`` table fixes the endpoint and the comparisons Holm corrects over. ``ragcun ablation run``
records that family (and its hash) in ``preregistration.json`` in the results folder before anything runs; a
later run or ``compare`` with a different family is refused, because choosing the primary analysis after seeing
results is how false "better"s are made. ``compare --exploratory`` analyses the results against a changed family
all the same, and says so on every line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable

FILE = "preregistration.json"


def read(results: Path) -> dict[str, Any] | None:
    path = Path(results) / FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); restore it from version control") from None


def _finished_runs(results: Path) -> int:
    return sum(1 for _ in (Path(results) / "runs").glob("*/*/result.json"))


def changed_fields(recorded: dict[str, Any], family: dict[str, Any]) -> list[str]:
    keys = sorted(set(recorded) | set(family))
    return [k for k in keys if recorded.get(k) != family.get(k)]


def check_or_record(plan, *, show: Callable[[str], None] = print) -> None:
    """Record ``plan.primary`` if nothing is recorded yet; raise if a recorded family differs."""
    if plan.primary is None:
        return
    family = plan.primary.family()
    recorded = read(plan.results)
    if recorded is not None:
        changed = changed_fields(recorded["family"], family)
        if changed:
            raise ValueError(
                f"{plan.path} [primary]: the primary analysis changed after it was recorded in "
                f"{plan.results / FILE} ({', '.join(changed)}: was "
                + "; ".join(f"{k}={recorded['family'].get(k)!r}" for k in changed)
                + "). Restore the [primary] table, or start a new results folder; "
                "`ragcun ablation compare --exploratory` analyses these results against the new family, without "
                "verdicts")
        return
    finished = _finished_runs(plan.results)
    from ragcun.files import write_text_atomic

    entry = {"family": family, "hash": plan.primary.family_hash(), "recorded": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "finished_runs_when_recorded": finished, "commit": _commit()}
    write_text_atomic(plan.results / FILE, json.dumps(entry, indent=1, sort_keys=True) + "\n")
    if finished:
        show(f"warning: the primary analysis was recorded after {finished} run(s) had finished: the report will say "
             "that it was not pre-registered")
    else:
        show(f"primary analysis pre-registered in {plan.results / FILE} (hash {entry['hash']})")


def check_for_compare(results: Path, family: dict[str, Any] | None, *, exploratory: bool) -> dict[str, Any]:
    """What the report says about pre-registration; raises on a changed family unless ``exploratory``."""
    recorded = read(results)
    if family is None:
        return {"status": "none", "note": "the plan declares no [primary] analysis: every comparison is exploratory"}
    if recorded is None:
        return {"status": "not recorded", "note": "no preregistration.json: the primary family was not recorded "
                "before the runs (treat the verdicts as post hoc)"}
    changed = changed_fields(recorded["family"], family)
    if changed and not exploratory:
        raise ValueError(f"{Path(results) / FILE}: the plan's [primary] analysis differs from the one recorded before "
                         f"the runs ({', '.join(changed)}); restore it, or pass --exploratory for an analysis without "
                         "verdicts")
    if changed:
        return {"status": "changed", "changed": changed, "note": "exploratory: the primary family differs from the "
                f"recorded one ({', '.join(changed)}); no verdicts"}
    after = recorded.get("finished_runs_when_recorded", 0)
    return {"status": "recorded" if not after else "recorded after results", "hash": recorded["hash"],
            "recorded": recorded["recorded"], "commit": recorded.get("commit"),
            "note": (f"pre-registered {recorded['recorded']} (hash {recorded['hash']}) before any run" if not after else
                     f"recorded {recorded['recorded']} after {after} run(s) had finished: a re-analysis, not a "
                     "pre-registration")}


def _commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
