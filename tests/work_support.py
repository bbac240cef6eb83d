"""A worker running in the background of a test, as `calsync worker` runs it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from calsync.runtime import Runtime
from calsync.work.listen import Listener
from calsync.work.worker import Worker
from tests.push_support import wait_for


@contextmanager
def idle_worker(runtime: Runtime) -> Iterator[Worker]:
    """One worker thread, listening (PostgreSQL) and past its first look, which found nothing: from here
    only a wake-up, an alarm or its next poll makes it look again."""
    worker = Worker(runtime, threads=1)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        if runtime.engine.dialect.name == "postgresql":
            wait_for(lambda: isinstance(worker.listener, Listener) and worker.listener.ready.is_set(), what="LISTEN")
        time.sleep(0.5)  # the look the listener asks for once it listens has been taken, and found nothing
        yield worker
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
