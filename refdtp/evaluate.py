"""``python -m refdtp.evaluate RUN_DIR``: test accuracy of a run's checkpoint.

The code lives in :mod:`refdtp.training.evaluate_cli`; run with ``--help``.
"""
import sys

from .training.evaluate_cli import main

if __name__ == "__main__":
    sys.exit(main())
