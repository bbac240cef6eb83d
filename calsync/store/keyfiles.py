"""Keys generated into the instance folder: made once, private (0600), and never read half-written.

Processes that start together all find a key missing. Each writes a candidate to a private
temporary file of its own and links it into place: a link fails when the name exists, so exactly
one candidate wins, and it was whole before anyone could see it. The others read the winner's.
On a filesystem without hard links the key is written with O_EXCL in one write, and a reader that
finds the file still empty waits for it.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from calsync.errors import ConfigError

# How long a reader waits for another process to fill a key file it found empty.
WAIT_FOR_WRITER = 5.0


def read_or_create(path: Path, make: Callable[[], bytes]) -> tuple[bytes, bool]:
    """The key in `path`, made by `make()` if there is none yet; and whether this call made it."""
    try:
        return _read_whole(path), False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = make().strip()
    if _link_into_place(path, key + b"\n"):
        return key, True
    return _read_whole(path), False


def _link_into_place(path: Path, content: bytes) -> bool:
    """Publish `content` at `path` unless a file is there already; True when ours was published."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        try:
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}:
                raise
            return _write_exclusive(path, content)  # no hard links here
        return True
    finally:
        os.unlink(temp)


def _write_exclusive(path: Path, content: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        os.write(fd, content)  # one write: a reader sees nothing or all of it
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _read_whole(path: Path) -> bytes:
    """The key in the file; an empty file is one another process is still writing, so wait for it."""
    deadline = time.monotonic() + WAIT_FOR_WRITER
    while True:
        key = path.read_bytes().strip()
        if key:
            return key
        if time.monotonic() > deadline:
            raise ConfigError(f"{path} is empty: delete it to have a new key generated, or set the key")
        time.sleep(0.01)
