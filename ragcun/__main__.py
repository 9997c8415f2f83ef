"""``python -m ragcun`` (and ``torchrun -m ragcun ...``) runs the command line."""

from ragcun.cli import main

if __name__ == "__main__":
    main()
