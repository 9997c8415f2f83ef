"""``python -m ragcun_mpnet``: assemble the model folder if needed and print its path."""

import sys

from ragcun_mpnet.assemble import model_path


def main() -> int:
    try:
        print(model_path())
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
