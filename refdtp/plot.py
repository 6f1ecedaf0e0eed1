"""``python -m refdtp.plot RUN_DIR [RUN_DIR ...]``: learning and alignment curves (PNG).

The code lives in :mod:`refdtp.training.plot`; run with ``--help``.
"""
import sys

from .training.plot import main

if __name__ == "__main__":
    sys.exit(main())
