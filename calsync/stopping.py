"""Stop a long-running command in order: SIGINT and SIGTERM set an event instead of raising.

A KeyboardInterrupt raised at an arbitrary instant can land in a finalizer or a weakref callback,
where Python prints "Exception ignored" and drops it: the command then runs on, deaf to Ctrl-C.
An event set by the handler is never lost, and a loop that waits on it wakes at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals(announce: Callable[[signal.Signals], None] | None = None) -> Iterator[threading.Event]:
    """The event the signals set while the block runs; the previous handlers come back after it."""
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def _handler(signum: int, _frame: FrameType | None) -> None:
        if announce is not None and not stop.is_set():
            announce(signal.Signals(signum))
        stop.set()

    for sig in STOP_SIGNALS:
        signal.signal(sig, _handler)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
