"""Child process of tests/test_sync_crash.py: forks syncing processes for the parent to kill.

Importing calsync takes a second or more on a busy machine, so this process imports once and then,
for every "go [calendar id]" line on stdin, forks a process that builds its own Runtime (no connection is shared
across the fork) and syncs one calendar in a loop until it is SIGKILLed; then it reaps it.

Configured through the CALSYNC_* environment (database, client secrets, emulator URL, token key);
argv: calendar row id, page size. Lines on stdout: "ready"; per fork "pid <n>", then from the forked
process per sync "begin", "page <n>" after each committed page, "end"; "dead <status>" once reaped.
"""

from __future__ import annotations

import os
import sys
import time
import traceback

from calsync.config import Settings
from calsync.errors import TransientGoogleError
from calsync.runtime import Runtime
from calsync.sync.run import sync_calendar


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def sync_forever(calendar_id: int, page_size: int) -> None:
    runtime = Runtime.create(Settings.from_env())
    while True:
        say("begin")
        try:
            sync_calendar(runtime, calendar_id, page_size=page_size, progress=lambda seen, _total: say(f"page {seen}"))
        except TransientGoogleError:
            time.sleep(0.01)
            continue
        say("end")
        time.sleep(0.005)


def main(calendar_id: int, page_size: int) -> None:
    say("ready")
    for command in sys.stdin:
        words = command.split()
        if not words or words[0] != "go":
            continue
        target = int(words[1]) if len(words) > 1 else calendar_id
        pid = os.fork()
        if pid == 0:
            try:
                sync_forever(target, page_size)
            except BaseException:
                say("error " + traceback.format_exc().replace("\n", " | "))
            os._exit(1)
        say(f"pid {pid}")
        _, status = os.waitpid(pid, 0)
        say(f"dead {status}")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
