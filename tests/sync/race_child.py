"""Child process of tests/sync/test_mirror.py: a fresh process whose threads make their first mirror
lookups all at once, as a new worker's threads do with their first syncs.

argv: the database URL. Prints how many lookups failed, then each distinct error on a line of its own.
"""

from __future__ import annotations

import sys
import threading

sys.setswitchinterval(1e-6)  # threads switch at almost every bytecode: a race shows at once, not once a month

from sqlalchemy.orm import Session  # noqa: E402 (after the switch interval, as the statements are built at import)

from calsync.store.db import make_engine  # noqa: E402
from calsync.sync.mirror import PageMirror  # noqa: E402

THREADS = 8


def main(url: str) -> None:
    engine = make_engine(url, pool_size=THREADS)
    ready = threading.Barrier(THREADS)
    errors: list[str] = []

    def look() -> None:
        with Session(engine) as session:
            mirror = PageMirror(session, 1, gen=None)
            ready.wait()
            try:
                mirror._load(["a", "b"])
            except Exception as err:
                errors.append(f"{type(err).__name__}: {err}"[:300])

    threads = [threading.Thread(target=look) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()
    print(len(errors))
    for error in sorted(set(errors)):
        print(error)


if __name__ == "__main__":
    main(sys.argv[1])
