"""`calsync webhooks …`: manage outgoing webhook subscriptions from a terminal.

The same domain functions as `/api/webhooks`; a command opens the database of CALSYNC_DATABASE_URL,
does its one unit of work and closes it. Nothing here delivers messages: the worker does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from calsync.cli.changes import open_database
from calsync.config import Settings
from calsync.errors import InvalidSubscription
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.states import SubscriptionStatus
from calsync.webhooks import claimcheck, subscriptions


@click.group()
def webhooks() -> None:
    """Outgoing webhooks: signed messages of every change to your endpoints."""


@webhooks.command("create")
@click.argument("url")
@click.option(
    "--event",
    "events",
    multiple=True,
    default=("*",),
    show_default=True,
    help="a type of the feed's rows (event.updated, account.disconnected, calendar.added, ...) or * (repeatable).",
)
@click.option(
    "--calendar",
    "calendars",
    multiple=True,
    metavar="ID",
    help="Only changes of this Google calendar id (repeatable; default: all).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(subscriptions.FORMATS),
    default="standard",
    show_default=True,
    help="standard: signed JSON messages; slack: one-line summaries for a Slack incoming webhook.",
)
@click.option("--verify-token", help="The hub.verify_token your endpoint expects during verification.")
@click.option(
    "--origin",
    type=click.Choice(subscriptions.ORIGINS),
    help="Only event rows of this origin (google: not the writes made through calsync's API).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def create(
    url: str,
    events: tuple[str, ...],
    calendars: tuple[str, ...],
    fmt: str,
    verify_token: str | None,
    origin: str | None,
    as_json: bool,
) -> None:
    """Verify URL (hub.challenge) and subscribe it; prints the signing secret ONCE."""
    with _runtime() as rt:
        spec = subscriptions.parse_spec(
            {
                "url": url,
                "events": list(events),
                "calendars": list(calendars) or None,
                "format": fmt,
                "verify_token": verify_token,
                "origin": origin,
            },
            rt.settings,
        )
        sub, secret = subscriptions.register(rt, spec)
        view = {**subscriptions.subscription_to_dict(sub), "secret": secret}
    if as_json:
        click.echo(json.dumps(view))
        return
    _print_subscription(view)
    click.echo(f"{'secret:':<17} {secret}")
    click.echo("Keep the secret now: it is not shown again (rotate-secret makes a new one).")


@webhooks.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_(as_json: bool) -> None:
    """List subscriptions (never their secrets)."""
    with _runtime() as rt, transaction(rt.sessions) as session:
        views = [subscriptions.subscription_to_dict(s) for s in subscriptions.list_subscriptions(session)]
    if as_json:
        for view in views:
            click.echo(json.dumps(view))
        return
    if not views:
        click.echo("no webhook subscriptions")
        return
    table = Table(
        Column("id", no_wrap=True), "status", "format", "events", Column("url", overflow="fold"), "last success"
    )
    for v in views:
        table.add_row(
            v["id"], v["status"], v["format"], ",".join(v["events"]), escape(v["url"]), v["last_success_at"] or "—"
        )
    Console(highlight=False).print(table)


@webhooks.command("show")
@click.argument("sub_id")
@click.option("--json", "as_json", is_flag=True)
def show(sub_id: str, as_json: bool) -> None:
    """Show one subscription."""
    with _runtime() as rt, transaction(rt.sessions) as session:
        view = subscriptions.subscription_to_dict(subscriptions.get_subscription(session, sub_id))
    if as_json:
        click.echo(json.dumps(view))
    else:
        _print_subscription(view)


@webhooks.command("pause")
@click.argument("sub_id")
def pause(sub_id: str) -> None:
    """Hold deliveries (they wait and go out on resume)."""
    _set_status(sub_id, SubscriptionStatus.PAUSED)


@webhooks.command("resume")
@click.argument("sub_id")
def resume(sub_id: str) -> None:
    """Resume a paused subscription, or re-enable a disabled one."""
    _set_status(sub_id, SubscriptionStatus.ACTIVE)


@webhooks.command("delete")
@click.argument("sub_id")
@click.confirmation_option(prompt="Delete the subscription and its delivery log?")
def delete(sub_id: str) -> None:
    """Delete a subscription with its deliveries."""
    with _runtime() as rt, transaction(rt.sessions) as session:
        subscriptions.delete_subscription(session, subscriptions.get_subscription(session, sub_id, lock=True))
    click.echo(f"deleted {sub_id}")


@webhooks.command("deliveries")
@click.argument("sub_id")
@click.option("--state", type=click.Choice(claimcheck.STATES), help="Only deliveries in this state.")
@click.option("--limit", type=click.IntRange(1, claimcheck.MAX_LIMIT), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, with every attempt.")
def deliveries(sub_id: str, state: str | None, limit: int, as_json: bool) -> None:
    """List deliveries, newest first, with their attempts."""
    with _runtime() as rt, transaction(rt.sessions) as session:
        items = claimcheck.list_deliveries(
            session, subscriptions.get_subscription(session, sub_id), state=state, limit=limit
        )
    if as_json:
        for item in items:
            click.echo(json.dumps(item))
        return
    if not items:
        click.echo("no deliveries")
        return
    table = Table(
        Column("id", no_wrap=True), "seq", "type", "state", "attempts", Column("last", overflow="fold"), "next attempt"
    )
    for d in items:
        # an endpoint's own words (a redirect's Location): text, never markup
        last = escape(d["last_error"] or (str(d["last_status"]) if d["last_status"] else "—"))
        table.add_row(
            str(d["id"]),
            str(d["seq"]),
            d["type"],
            d["state"],
            str(d["attempt_count"]),
            last,
            d["next_attempt_at"] or "—",
        )
    Console(highlight=False).print(table)


@webhooks.command("replay")
@click.argument("sub_id")
@click.option(
    "--delivery",
    "delivery_ids",
    type=click.IntRange(min=1, max=2**63 - 1),  # an id is a signed 64-bit integer in both databases
    multiple=True,
    help="Replay this delivery (repeatable; default: every failed one).",
)
def replay(sub_id: str, delivery_ids: tuple[int, ...]) -> None:
    """Queue deliveries again, with the same webhook-id; the worker sends them."""
    with _runtime() as rt, transaction(rt.sessions) as session:
        sub = subscriptions.get_subscription(session, sub_id, lock=True)
        queued = claimcheck.replay(session, sub, list(delivery_ids) or None, rt.clock.now())
        rt.wakeup.notify_after_commit(session)
    click.echo(f"queued {len(queued)} deliveries again" + (f": {queued}" if queued else ""))


@webhooks.command("rotate-secret")
@click.argument("sub_id")
@click.option(
    "--grace",
    type=float,
    default=subscriptions.DEFAULT_GRACE_SECONDS,
    show_default=True,
    help="Seconds during which the old secret keeps signing alongside the new one.",
)
def rotate_secret(sub_id: str, grace: float) -> None:
    """Make a new signing secret (printed ONCE); the old one signs too until the grace ends."""
    with _runtime() as rt, transaction(rt.sessions) as session:
        sub = subscriptions.get_subscription(session, sub_id, lock=True)
        secret = subscriptions.rotate_secret(rt.cipher, sub, rt.clock.now(), grace)
        until = subscriptions.subscription_to_dict(sub)["previous_secret_until"]
    click.echo(f"secret:   {secret}")
    click.echo(f"the old secret keeps signing until {until}" if until else "the old secret no longer signs")


def _set_status(sub_id: str, status: SubscriptionStatus) -> None:
    with _runtime() as rt, transaction(rt.sessions) as session:
        sub = subscriptions.set_status(subscriptions.get_subscription(session, sub_id, lock=True), status)
        rt.wakeup.notify_after_commit(session)
        click.echo(f"{sub.id} is {sub.status}")


@contextmanager
def _runtime() -> Iterator[Runtime]:
    settings = Settings.from_env()
    rt = Runtime.create(settings, engine=open_database(settings.database_url))  # never a new file by accident
    try:
        yield rt
    except InvalidSubscription as err:
        raise click.BadParameter(str(err)) from err
    finally:
        rt.close()


def _print_subscription(view: dict[str, Any]) -> None:
    for key in (
        "id",
        "url",
        "status",
        "format",
        "events",
        "calendars",
        "disabled_reason",
        "created_at",
        "last_success_at",
        "failing_since",
    ):
        value = view.get(key)
        if isinstance(value, list):
            value = ", ".join(value)
        click.echo(f"{key + ':':<17} {value if value not in (None, '') else '—'}")
