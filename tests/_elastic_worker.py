"""``python -m ragcun`` plus one injected fault, for the elastic-restart test in tests/test_multinode.py.

torchrun runs this script in place of ``-m ragcun``: the command line is the same. On torchrun's first attempt
(``TORCHELASTIC_RESTART_COUNT=0``) the worker of global rank ``$RAGCUN_TEST_KILL_RANK`` SIGKILLs itself just before
its ``$RAGCUN_TEST_KILL_AT_STEP``-th optimizer step, as a crashed machine or an OOM kill would stop it: no
exception, no cleanup, no checkpoint. It first writes ``$RAGCUN_TEST_KILL_MARKER`` (so the test knows the fault
fired) and never fires again once that file exists, nor on torchrun's restarts.

The fault lives here, around ``torch.optim.AdamW.step`` (public API, patched before the optimizer is built), so
that ragcun's training loop carries no test-only code; killing the step is deterministic, where a kill from
outside, timed by watching the checkpoint folder, would race a run of tiny models that lasts seconds.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def _install_fault() -> None:
    at = os.environ.get("RAGCUN_TEST_KILL_AT_STEP")
    marker = Path(os.environ.get("RAGCUN_TEST_KILL_MARKER", "killed.marker"))
    if not at or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0" or marker.exists():
        return
    if os.environ.get("RANK") != os.environ.get("RAGCUN_TEST_KILL_RANK", "1"):
        return
    import torch

    original = torch.optim.AdamW.step
    calls = 0

    def step(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == int(at):
            marker.write_text(f"rank {os.environ['RANK']} pid {os.getpid()} killed before optimizer step {calls}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = step


if __name__ == "__main__":
    _install_fault()
    from ragcun.cli import main

    sys.argv[0] = "ragcun"
    main()
