"""Ctrl-C that waits: keep a checkpoint write from being cut in half."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

_active = []  # one entry per open defer_interrupts block


@contextmanager
def defer_interrupts():
    """Delay SIGINT until the block has finished, then raise KeyboardInterrupt.

    Nested blocks defer to the outermost one. Outside the main thread (where
    signal handlers cannot be set) the block runs unprotected; the atomic
    rename of the checkpoint still keeps the old file whole.
    """
    if _active or threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    _active.append(True)
    try:
        yield
    finally:
        _active.pop()
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
