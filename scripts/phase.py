"""Run one phase of a script and say what it cost: ``python scripts/phase.py "1/3 train" CMD ARGS...``.

Prints the phase's label before it starts and its wall time and peak memory (the largest resident set of the
command's processes, from getrusage) when it ends; exits with the command's exit code.
"""

import resource
import subprocess
import sys
import time


def main() -> int:
    label, command = sys.argv[1], sys.argv[2:]
    print(f"== phase {label}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    code = subprocess.call(command)
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux reports KiB
    print(f"== phase {label}: {'done' if code == 0 else f'failed (exit {code})'} in "
          f"{time.perf_counter() - start:.0f} s, peak memory {peak_mib:.0f} MiB", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
