"""`calsync demo`: the emulator, calsync under gunicorn, a simulated person, and every diff printed live.

calsync runs exactly as people run it (`calsync serve` in its own process, on a SQLite database in
a scratch folder); the demo talks to it only over HTTP: the consent through `/connect` like a
browser, and the diffs from `/api/changes` like any consumer.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from calsync.errors import CalsyncError
from calsync.humanize import event_title, event_when, field_diffs, lifecycle_title
from calsync.store.crypto import new_key
from calsync.store.states import ChangeKind, Origin, SyncState

POLL_SECONDS = 0.25
START_TIMEOUT = 60.0
KIND_STYLE = {ChangeKind.CREATED: ("green", "+"), ChangeKind.UPDATED: ("yellow", "~"), ChangeKind.DELETED: ("red", "−")}
# Writing is on in the demo, so an app's booking can go through calsync's API.
DEMO_SCOPES = (
    "https://www.googleapis.com/auth/calendar.readonly",
    "https://www.googleapis.com/auth/calendar.events",
)


class DemoStopped(Exception):
    """Asked to stop (Ctrl-C or SIGTERM) before the demo was running: not an error."""


class DemoFailed(CalsyncError):
    """The demo could not start; the message says what to look at."""


@dataclass(frozen=True)
class DemoOptions:
    port: int | None = None
    emulator_port: int | None = None
    interval: float = 4.0
    duration: float | None = None
    edits: bool = True
    directory: Path | None = None
    seed: int | None = None


def run_demo(options: DemoOptions, stop: threading.Event, console: Console) -> None:
    """Run until `stop` is set or the duration has passed; everything started is stopped again."""
    from calsync.demo.person import DemoPerson
    from calsync.emulator import Emulator

    with ExitStack() as cleanup:
        folder = _folder(options.directory, cleanup)
        emu = Emulator(seed=options.seed).start(port=options.emulator_port or 0)
        cleanup.callback(emu.stop)
        port = options.port or _free_port()
        public = f"http://127.0.0.1:{port}"
        secrets_file = emu.write_client_secrets(folder / "client_secret.json", [public + "/oauth2callback"])
        person = DemoPerson(emu, seed=options.seed)
        person.setup(datetime.now(UTC))
        env = _environment(folder, public, emu.api_url, secrets_file)
        console.print(f"[dim]starting calsync (gunicorn) on {public}, data in {folder} …[/dim]")
        server = _start_calsync(env, port, folder / "calsync.log")
        cleanup.callback(_stop_process, server)
        _wait_healthy(public, server, folder / "calsync.log", stop)

        api = requests.Session()  # closed before the server stops: gunicorn waits on kept-alive sockets
        cleanup.callback(api.close)
        api.headers["Authorization"] = f"Bearer {env['CALSYNC_API_TOKEN']}"
        _connect(emu, public, person.email)
        names = _wait_mirrored(api, public, len(person.calendars), stop)
        _banner(console, public, env, emu.url, folder, options)
        _write_through_api(api, public, person.email, console)

        editor = None
        if options.edits:
            editor = threading.Thread(
                target=_edit_loop, args=(person, options.interval, stop, console), name="demo-person", daemon=True
            )
            editor.start()
        deadline = time.monotonic() + options.duration if options.duration else None
        cursor = 0
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            cursor = _print_new_changes(api, public, cursor, names, console)
            stop.wait(POLL_SECONDS)
        stop.set()
        if editor is not None:
            editor.join(timeout=10)
        console.print("[dim]stopping calsync and the emulator …[/dim]")
    console.print("demo stopped.")


def render_change(change: dict[str, Any], calendar_name: str) -> list[str]:
    """Rich markup for one change: a headline, then `field  before → after` for updates."""
    stamp = str(change.get("detected_at", ""))[11:19]
    if change["change"] is None:  # an account's or a calendar's step
        return [
            f"[bold magenta]◆ #{change['seq']}[/bold magenta] [dim]{stamp}[/dim] "
            f"[magenta]{change['type']}[/magenta] {escape(lifecycle_title(change['type'], change.get('summary')))}"
        ]
    colour, sign = KIND_STYLE.get(change["change"], ("white", "·"))
    title = event_title(change.get("before"), change.get("after"), change["event_id"])
    origin = change.get("origin")
    lines = [
        f"[bold {colour}]{sign} #{change['seq']}[/bold {colour}] [dim]{stamp}[/dim] "
        f"[bold]{escape(calendar_name)}[/bold] [{colour}]{change['change']}[/{colour}] “{escape(title)}”"
        + (f" [bold blue]origin: {origin}[/bold blue]" if origin == Origin.API else "")
    ]
    if change["change"] == ChangeKind.UPDATED:
        width = max((len(f) for f in change["fields"]), default=0)
        for diff in field_diffs(change["fields"], change.get("before"), change.get("after")):
            lines.append(
                f"      [cyan]{escape(diff.name.ljust(width))}[/cyan]  [red]{escape(diff.before)}[/red]"
                f" [dim]→[/dim] [green]{escape(diff.after)}[/green]"
            )
    else:
        when = event_when(change.get("after") or change.get("before"))
        if when:
            lines.append(
                f"      [dim]{'was' if change['change'] == ChangeKind.DELETED else 'starts'} {escape(when)}[/dim]"
            )
    return lines


# Steps --------------------------------------------------------------------------------------------
def _folder(directory: Path | None, cleanup: ExitStack) -> Path:
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        return directory.resolve()
    folder = Path(tempfile.mkdtemp(prefix="calsync-demo-"))
    cleanup.callback(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _environment(folder: Path, public: str, api_url: str, secrets_file: Path) -> dict[str, str]:
    """Fresh keys and passwords for this run; nothing of the caller's CALSYNC_* leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALSYNC_")}
    env.update(
        {
            "CALSYNC_DATABASE_URL": f"sqlite:///{folder / 'calsync.db'}",
            "CALSYNC_GOOGLE_CLIENT_SECRETS": str(secrets_file),
            "CALSYNC_GOOGLE_API_URL": api_url,
            "CALSYNC_PUBLIC_URL": public,
            "CALSYNC_SECRET_KEY": secrets.token_urlsafe(32),
            "CALSYNC_TOKEN_KEY": new_key(),
            "CALSYNC_API_TOKEN": secrets.token_urlsafe(24),
            "CALSYNC_ADMIN_PASSWORD": secrets.token_urlsafe(12),
            "CALSYNC_INSTANCE_PATH": str(folder / "instance"),
            "CALSYNC_GOOGLE_SCOPES": " ".join(DEMO_SCOPES),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _start_calsync(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """`calsync serve` in its own session, so a terminal's Ctrl-C reaches only the demo, which stops it.

    It runs in the scratch folder: gunicorn puts its working directory on sys.path.
    """
    command = [
        sys.executable,
        "-c",
        "import sys; from calsync.cli import main; sys.argv[0] = 'calsync'; main()",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            env=env,
            cwd=log_path.parent,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


def _wait_healthy(public: str, server: subprocess.Popen[bytes], log_path: Path, stop: threading.Event) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if stop.is_set():
            raise DemoStopped
        if server.poll() is not None:
            raise DemoFailed(f"calsync serve exited with status {server.returncode}: {_last_line(log_path)}")
        try:
            if requests.get(public + "/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        stop.wait(0.2)
    raise DemoFailed(f"calsync did not answer on {public} within {START_TIMEOUT:.0f} s (see {log_path})")


def _connect(emu: Any, public: str, email: str) -> None:
    """The real consent flow, as a browser follows it: /connect → Google's consent → /oauth2callback."""
    emu.auto_approve = email
    try:
        with requests.Session() as browser:
            resp = browser.get(public + "/connect", timeout=30)
    finally:
        emu.auto_approve = None
    if resp.status_code != 200 or not resp.url.startswith(public + "/connected"):
        raise DemoFailed(f"the consent flow ended at {resp.url} with HTTP {resp.status_code}")


def _wait_mirrored(api: requests.Session, public: str, expected: int, stop: threading.Event) -> dict[str, str]:
    """Wait for the baseline sync and push channel of every calendar; returns Google id → name."""
    deadline = time.monotonic() + START_TIMEOUT
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if stop.is_set():
            raise DemoStopped
        rows = api.get(public + "/api/calendars", timeout=10).json()
        if len(rows) >= expected and all(r["sync_state"] == SyncState.SYNCED and r.get("channel") for r in rows):
            break
        stop.wait(0.2)
    else:
        raise DemoFailed(f"the calendars were not mirrored within {START_TIMEOUT:.0f} s: {rows}")
    return {r["calendar_id"]: r.get("summary") or r["calendar_id"] for r in rows}


def _write_through_api(api: requests.Session, public: str, calendar: str, console: Console) -> None:
    """What an embedding app does: book an event through calsync's API (idempotently); its feed row
    then says `origin: api`, and the notification Google sends for it adds no second row."""
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    body = {
        "summary": "Booked by an app through calsync",
        "start": {"dateTime": start.isoformat().replace("+00:00", "Z")},
        "end": {"dateTime": (start + timedelta(minutes=30)).isoformat().replace("+00:00", "Z")},
    }
    url = f"{public}/api/calendars/{calendar}/events"
    try:
        resp = api.post(url, json=body, headers={"Idempotency-Key": "demo-booking-1"}, timeout=30)
        resp.raise_for_status()
    except requests.RequestException as err:
        console.print(f"[red]the write through the API failed: {escape(str(err))}[/red]")
        return
    console.print(
        f"[dim italic]✎ an app: POST /api/calendars/{escape(calendar)}/events → {resp.status_code}, "
        f"seq {resp.json()['seq']}[/dim italic]"
    )


def _edit_loop(person: Any, interval: float, stop: threading.Event, console: Console) -> None:
    while not stop.wait(interval):
        try:
            done = person.step()
        except Exception as err:  # the person is scenery: report, keep the demo going
            console.print(f"[red]the simulated person failed: {escape(str(err))}[/red]")
            continue
        console.print(f"[dim italic]✎ {escape(done)}[/dim italic]")


def _print_new_changes(api: requests.Session, public: str, cursor: int, names: dict[str, str], console: Console) -> int:
    try:
        resp = api.get(public + "/api/changes", params={"after": cursor, "limit": 100}, timeout=10)
        resp.raise_for_status()
    except requests.RequestException as err:
        console.print(f"[red]could not read /api/changes: {escape(str(err))}[/red]")
        return cursor
    body = resp.json()
    for change in body["changes"]:
        lines = render_change(change, names.get(change["calendar_id"], change["calendar_id"]))
        console.print("\n".join(lines), highlight=False)  # one call: the person's lines never land inside
    return int(body["next"])


def _banner(
    console: Console, public: str, env: dict[str, str], emulator: str, folder: Path, options: DemoOptions
) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("Dashboard", f"[link={public}/dashboard/]{public}/dashboard/[/link]")
    grid.add_row("Password", env["CALSYNC_ADMIN_PASSWORD"])
    grid.add_row("API", f"curl -H 'Authorization: Bearer {env['CALSYNC_API_TOKEN']}' '{public}/api/changes?after=0'")
    grid.add_row("Connect more", f"{public}/connect  (approve on the emulated Google consent page)")
    grid.add_row("Google (emulated)", emulator)
    grid.add_row("Data", str(folder) + ("" if options.directory else "  (removed when the demo stops)"))
    what = (
        "a simulated person edits the calendars every " + f"{options.interval:g} s"
        if options.edits
        else "no simulated edits (--no-edits): change events in the emulator yourself"
    )
    console.print(
        Panel(
            grid,
            title="[bold]calsync demo[/bold]",
            subtitle="Ctrl-C stops everything",
            border_style="cyan",
            expand=False,
        )
    )
    console.print(f"[bold]Watching the diff log:[/bold] {what}.\n")


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (gunicorn's graceful stop, the worker finishing its job), then SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
