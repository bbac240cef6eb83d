"""`calsync events create|patch|delete`: the API's writes from a terminal, as the operator.

The same write as `POST/PATCH/DELETE /api/calendars/{cal}/events` (calsync.sync.writes): Google
first, then the mirror and the feed in one commit. The result is printed as the API's JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from calsync.cli.changes import open_database
from calsync.config import Settings
from calsync.errors import IdempotencyKeyReused, InsufficientScope, InvalidWrite, WriteConflict
from calsync.readmodels import reads
from calsync.runtime import Runtime

# Google's sendUpdates values (as calsync.sync.writes checks them; that module is imported only
# when a command runs: it brings the Google client, which `calsync --help` must not load).
SEND_UPDATES = ("all", "externalOnly", "none")

_account = click.option("--account", metavar="EMAIL", help="The account, when several share the calendar.")
_send_updates = click.option(
    "--send-updates", type=click.Choice(SEND_UPDATES), help="Who Google tells of the change (sendUpdates)."
)
_if_match = click.option(
    "--if-match", metavar="ETAG", help="Only if the event is still at this version (Google's check)."
)
_body = click.option(
    "--body", "body_text", metavar="JSON", default="-", show_default=True, help="The event as JSON; - reads stdin."
)


@click.group()
def events() -> None:
    """Create, patch and delete events in Google through calsync (needs a write scope)."""


@events.command()
@click.argument("calendar")
@_body
@click.option("--idempotency-key", metavar="KEY", help="The same key and body make one event however often sent.")
@_account
@_send_updates
def create(
    calendar: str, body_text: str, idempotency_key: str | None, account: str | None, send_updates: str | None
) -> None:
    """Create an event in CALENDAR from a Google Event resource."""
    from calsync.sync import writes

    body = _read_body(body_text)
    with _runtime() as rt:
        result = writes.create_event(
            rt, _calendar(rt, calendar, account), body, idempotency_key=idempotency_key, send_updates=send_updates
        )
    _print({"event": result.event, "seq": result.seq})


@events.command()
@click.argument("calendar")
@click.argument("event_id")
@_body
@_if_match
@_account
@_send_updates
def patch(
    calendar: str, event_id: str, body_text: str, if_match: str | None, account: str | None, send_updates: str | None
) -> None:
    """Change the fields given in the JSON body of EVENT_ID in CALENDAR."""
    from calsync.sync import writes

    body = _read_body(body_text)
    with _runtime() as rt:
        result = writes.patch_event(
            rt, _calendar(rt, calendar, account), event_id, body, if_match=if_match, send_updates=send_updates
        )
    _print({"event": result.event, "seq": result.seq})


@events.command()
@click.argument("calendar")
@click.argument("event_id")
@_if_match
@_account
@_send_updates
def delete(calendar: str, event_id: str, if_match: str | None, account: str | None, send_updates: str | None) -> None:
    """Delete EVENT_ID (an occurrence by its instance id) from CALENDAR."""
    from calsync.sync import writes

    with _runtime() as rt:
        result = writes.delete_event(
            rt, _calendar(rt, calendar, account), event_id, if_match=if_match, send_updates=send_updates
        )
    _print({"seq": result.seq})


@contextmanager
def _runtime() -> Iterator[Runtime]:
    """A runtime whose refusals are one clear line each (the write changed nothing)."""
    settings = Settings.from_env()
    rt = Runtime.create(settings, engine=open_database(settings.database_url))  # never a new file by accident
    try:
        yield rt
    except InvalidWrite as err:
        raise click.BadParameter(str(err), param_hint=err.field) from err
    except InsufficientScope as err:
        raise click.ClickException(f"{err}\n{err.reconnect}") from err
    except WriteConflict as err:
        current = json.dumps(err.current, ensure_ascii=False, sort_keys=True)
        raise click.ClickException(f"{err}\ncurrent: {current}") from err
    except IdempotencyKeyReused as err:
        raise click.ClickException(str(err)) from err
    finally:
        rt.close()


def _calendar(rt: Runtime, google_id: str, account: str | None) -> int:
    with rt.sessions() as session:
        try:
            return reads.one_calendar(session, google_id, account).id
        except reads.AmbiguousCalendar as err:
            raise click.UsageError(f"{err} (use --account)") from err


def _read_body(text: str) -> Any:
    raw = sys.stdin.read() if text == "-" else text
    try:
        return json.loads(raw)
    except ValueError as err:
        raise click.BadParameter(f"not JSON: {err}", param_hint="--body") from err


def _print(result: dict[str, Any]) -> None:
    click.echo(json.dumps(result, ensure_ascii=False, sort_keys=True))
