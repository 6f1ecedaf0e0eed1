"""``python -m verify.paper``: see :mod:`verify.paper.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
