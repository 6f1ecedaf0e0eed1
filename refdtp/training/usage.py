"""One-line usage errors for the command lines (train, evaluate, plot).

Bad input is reported as a single ``error: ...`` line on stderr with exit
status 2, never a traceback and never argparse's multi-line usage block.
"""
from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2


def one_line(message) -> str:
    """``message`` with its line breaks replaced by spaces."""
    return " ".join(str(message).splitlines())


def usage_error(message) -> int:
    """Print ``error: <message>`` as one line on stderr; return exit status 2."""
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    return EXIT_USAGE


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one ``error:`` line on stderr (exit 2)."""

    def error(self, message):
        """Print ``error: <message> (see <prog> --help)`` and exit with status 2."""
        self.exit(EXIT_USAGE, f"error: {one_line(message)} (see {self.prog} --help)\n")
