"""A web process told to stop keeps accepting until a replacement listens beside it (a reload).

With SO_REUSEPORT each gunicorn worker listens on a socket of its own and the master on none. On
SIGHUP gunicorn forks the new workers and at once tells the old ones to stop. An old worker that
stopped accepting and exited before any new one had opened its socket left the port with no
listener for a moment: connections queued on its socket were reset, new ones refused (69 of 322
requests over three reloads, under the full test suite's load on two cores). So a stopping worker
that has younger siblings (its replacements) keeps accepting until the port has more listening
sockets than there are to be workers, or `HANDOVER_SECONDS` at most. A plain stop has no younger
sibling and is not delayed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

HANDOVER_SECONDS = 5.0
CHECK_SECONDS = 0.01
_LISTEN = "0A"  # the TCP state of a listening socket in /proc/net/tcp


def listening_sockets(port: int) -> int:
    """Listening TCP sockets on `port` in this network namespace (IPv4 and IPv6)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 3 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def younger_siblings() -> bool:
    """Whether this process's parent has started another process like it (the same command line,
    a fork of the same master) after it."""
    me, parent = os.getpid(), os.getppid()
    try:
        children = [int(pid) for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        mine, started = _cmdline(me), _started(me)
    except OSError:
        return False
    for pid in children:
        try:
            if pid != me and _started(pid) > started and _cmdline(pid) == mine:
                return True
        except OSError:  # gone meanwhile
            continue
    return False


def wait_for_replacements(port: int, workers: int, *, limit: float = HANDOVER_SECONDS) -> bool:
    """Return once no replacement is coming or one listens (True), or after `limit` seconds (False)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not younger_siblings() or listening_sockets(port) > workers:
            return True
        time.sleep(CHECK_SECONDS)
    return False


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def _started(pid: int) -> int:
    """Clock ticks after boot at which `pid` started (field 22 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])
