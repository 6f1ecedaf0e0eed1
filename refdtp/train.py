"""``python -m refdtp.train``: train with checkpoints, resume, metrics and a report.

Run it without arguments for an overview, or with ``--help``. The code lives
in :mod:`refdtp.training` (``cli`` parses, ``run`` loops, ``checkpoint`` saves).
"""
import sys

from .training.cli import main

if __name__ == "__main__":
    sys.exit(main())
