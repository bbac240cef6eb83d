"""`calsync webhooks …` through click, against the same database and a real subscriber."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from standardwebhooks import Webhook

from calsync.cli import _register, cli
from calsync.config import Settings
from calsync.errors import NotFoundError, VerificationFailed
from calsync.runtime import Runtime
from tests.webhooks.receiver import Answer, Receiver
from tests.webhooks.support import deliver, exhaust_all, make_calendar, write_change


@pytest.fixture
def run(settings: Settings, tmp_path: Path) -> Any:
    _register()
    env = {
        "CALSYNC_DATABASE_URL": settings.database_url,
        "CALSYNC_TOKEN_KEY": str(settings.token_key),
        "CALSYNC_WEBHOOK_ALLOW_HTTP": "1",
        "CALSYNC_WEBHOOK_ALLOW_PRIVATE": "1",
        "CALSYNC_WEBHOOK_VERIFY_TIMEOUT": "0.5",
        "CALSYNC_INSTANCE_PATH": str(tmp_path / "instance"),
    }

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, ["webhooks", *args], env=env)

    return invoke


def test_create_list_show_pause_resume_delete(run: Any, receiver: Receiver) -> None:
    created = run(
        "create",
        receiver.url,
        "--event",
        "event.created",
        "--event",
        "event.deleted",
        "--calendar",
        "team@group",
        "--json",
    )
    assert created.exit_code == 0, created.output
    view = json.loads(created.output)
    assert view["secret"].startswith("whsec_") and view["events"] == ["event.created", "event.deleted"]
    assert view["calendars"] == ["team@group"] and len(receiver.verifications()) == 1
    sub_id = view["id"]

    listed = run("list")
    assert sub_id in listed.output and "active" in listed.output and view["secret"] not in listed.output
    assert json.loads(run("show", sub_id, "--json").output)["status"] == "active"
    assert run("pause", sub_id).output.strip() == f"{sub_id} is paused"
    assert run("resume", sub_id).output.strip() == f"{sub_id} is active"
    assert run("delete", sub_id, "--yes").exit_code == 0
    assert run("list").output.strip() == "no webhook subscriptions"
    missing = run("show", sub_id)
    assert isinstance(missing.exception, NotFoundError)


def test_create_prints_the_secret_once_in_human_form(run: Any, receiver: Receiver) -> None:
    out = run("create", receiver.url).output
    assert "whsec_" in out and "not shown again" in out


def test_a_failed_verification_stores_nothing(run: Any, receiver: Receiver) -> None:
    receiver.verify_mode = "wrong"
    result = run("create", receiver.url)
    assert isinstance(result.exception, VerificationFailed)
    assert run("list").output.strip() == "no webhook subscriptions"


def test_bad_event_names_are_refused(run: Any, receiver: Receiver) -> None:
    result = run("create", receiver.url, "--event", "event.moved")
    assert result.exit_code == 2 and "unknown event 'event.moved'" in result.output
    assert receiver.requests == []


def test_a_delivery_id_past_64_bits_is_a_usage_error(run: Any, receiver: Receiver) -> None:
    """It reached the database driver, and the command ended in an OverflowError's traceback."""
    view = json.loads(run("create", receiver.url, "--json").output)
    result = run("replay", view["id"], "--delivery", str(2**63))
    assert result.exit_code == 2 and "--delivery" in result.output


def test_deliveries_replay_and_rotate_secret(run: Any, runtime: Runtime, receiver: Receiver) -> None:
    view = json.loads(run("create", receiver.url, "--json").output)
    receiver.default = Answer(500)
    write_change(runtime, make_calendar(runtime))
    exhaust_all(runtime)

    failed = [
        json.loads(line) for line in run("deliveries", view["id"], "--state", "failed", "--json").output.splitlines()
    ]
    assert [(d["state"], d["attempt_count"], len(d["attempts"])) for d in failed] == [("failed", 8, 8)]
    assert "failed" in run("deliveries", view["id"]).output

    rotated = run("rotate-secret", view["id"], "--grace", "600").output
    new_secret = rotated.split()[1]
    assert new_secret.startswith("whsec_") and "keeps signing until" in rotated

    assert run("replay", view["id"]).output.startswith("queued 1 deliveries again")
    receiver.default = Answer(200)
    assert deliver(runtime) == 1
    post = receiver.posts()[-1]
    assert post.headers["Webhook-Id"] == failed[0]["message_id"]
    # The frozen clock is a day ahead after the retries, past the ±5 min check of verify(): compare signatures.
    expected = Webhook(new_secret).sign(
        post.headers["Webhook-Id"],
        datetime.fromtimestamp(int(post.headers["Webhook-Timestamp"]), UTC),
        post.body.decode(),
    )
    assert expected in post.headers["Webhook-Signature"].split(" ")


def test_text_from_a_subscription_is_printed_as_text_not_markup(run: Any, receiver: Receiver) -> None:
    """rich read the URL (or an endpoint's redirect target in a delivery's error) as markup: `[/x]`
    made `webhooks list` crash, and `[black on black]` could hide text."""
    url = receiver.url + "?tag=[/x]"
    assert run("create", url, "--json").exit_code == 0
    listed = run("list")
    assert listed.exit_code == 0, listed.output
    assert "/x]" in listed.output  # the URL column folds: the closing tag is printed, not read
