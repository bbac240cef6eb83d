"""Throughput of the emulator's events.list over loopback (run: python tests/bench/bench_emulator.py).

The emulator runs in its own process (as in the demo); several client threads in this process
send keep-alive requests.  A trivial ``/healthz`` on the same server is the in-run baseline.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import threading
import time
from urllib.parse import urlsplit

CALENDAR = "alice@example.com"


def serve(ready: multiprocessing.queues.Queue[tuple[str, str]], stop: multiprocessing.synchronize.Event) -> None:
    """Child process: start an emulator with one calendar of ~100 events and a token."""
    from calsync.emulator import Emulator

    emu = Emulator(log_size=1000).start()
    emu.create_user(CALENDAR)
    emu.bulk_insert_events(
        CALENDAR,
        [
            {
                "summary": f"event {i}",
                "location": "Room 4",
                "description": "weekly sync " * 3,
                "start": {"dateTime": f"2030-01-{1 + i % 28:02d}T{8 + i % 9:02d}:00:00Z"},
                "end": {"dateTime": f"2030-01-{1 + i % 28:02d}T{9 + i % 9:02d}:00:00Z"},
            }
            for i in range(100)
        ],
    )
    ready.put((emu.url, emu.issue_tokens(CALENDAR)["access_token"]))
    stop.wait()
    emu.stop()


def hammer(url: str, path: str, headers: dict[str, str], seconds: float, threads: int) -> float:
    """Requests per second over ``threads`` keep-alive connections for ``seconds``."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    host = parts.hostname
    counts = [0] * threads
    deadline = time.monotonic() + seconds

    def run(slot: int) -> None:
        conn = http.client.HTTPConnection(host, parts.port, timeout=10)
        while time.monotonic() < deadline:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise SystemExit(f"{path}: HTTP {response.status} {body[:200]!r}")
            counts[slot] += 1
        conn.close()

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    ready: multiprocessing.queues.Queue[tuple[str, str]] = multiprocessing.Queue()
    stop = multiprocessing.Event()
    child = multiprocessing.Process(target=serve, args=(ready, stop), daemon=True)
    child.start()
    url, token = ready.get(timeout=30)
    auth = {"Authorization": f"Bearer {token}"}
    events_path = f"/calendar/v3/calendars/{CALENDAR}/events?alt=json"
    target = urlsplit(url)
    assert target.hostname is not None
    conn = http.client.HTTPConnection(target.hostname, target.port)
    conn.request("GET", events_path, headers=auth)
    items = len(json.loads(conn.getresponse().read())["items"])
    conn.close()
    hammer(url, "/healthz", {}, 0.5, args.threads)  # warm up
    baseline = hammer(url, "/healthz", {}, args.seconds, args.threads)
    listed = hammer(url, events_path, auth, args.seconds, args.threads)
    stop.set()
    child.join(timeout=10)
    print(f"events.list ({items} events/page): {listed:.0f} requests/s with {args.threads} client threads")
    print(f"baseline GET /healthz:          {baseline:.0f} requests/s")
    print(f"ratio events.list / baseline:   {listed / baseline:.2f}")
    print("target >= 500 requests/s:", "met" if listed >= 500 else "NOT met")


if __name__ == "__main__":
    main()
