"""The emulator's HTTP server: connections kept alive between requests, and closed once idle, as Google's are."""

from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

from calsync.emulator import Emulator


def _get(conn: http.client.HTTPConnection, path: str) -> int:
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    return response.status


def test_a_connection_serves_several_requests_and_is_closed_once_idle() -> None:
    emu = Emulator(keep_alive=1).start()
    try:
        address = urlsplit(emu.url)
        conn = http.client.HTTPConnection(address.hostname or "", address.port, timeout=5)
        try:
            assert _get(conn, "/calendar/v3/users/me/calendarList") == 401  # no token: Google's answer
            sock = conn.sock
            assert _get(conn, "/calendar/v3/users/me/calendarList") == 401
            assert conn.sock is sock and sock is not None  # the same TCP connection, kept alive
            time.sleep(2.5)  # idle 1 s, looked at every 0.5 s
            assert sock.recv(1) == b""  # idle past the limit: the server closed it
        finally:
            conn.close()
    finally:
        emu.stop()
