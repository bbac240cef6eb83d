"""`calsync db`: key rotation finished by `reencrypt`."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from click.testing import CliRunner

from calsync.cli.db import db
from calsync.config import Secret, Settings
from calsync.runtime import Runtime
from calsync.store.crypto import new_key
from calsync.store.db import transaction
from calsync.store.models import Account, WebhookSubscription


def test_reencrypt_moves_every_secret_to_the_first_key_so_the_old_one_can_go(settings: Settings) -> None:
    """Rows moved to a new key only when something rewrote them: a webhook's secret, a grant waiting
    for consent again, never; with the old key dropped they were unreadable for good."""
    old, new = new_key(), new_key()
    before = Runtime.create(dataclasses.replace(settings, token_key=Secret(old)))
    try:
        with transaction(before.sessions) as session:
            session.add(Account(email="ann@example.com", credentials=before.cipher.encrypt_str('{"token": "t"}')))
            session.add(
                WebhookSubscription(
                    id="wh_1", url="https://hooks.example.com/x", events=["event.created"],
                    secret=before.cipher.encrypt_str("whsec_abc"), format="standard", status="active",
                )
            )  # fmt: skip
    finally:
        before.close()
    env = {"CALSYNC_DATABASE_URL": settings.database_url, "CALSYNC_TOKEN_KEY": f"{new},{old}"}
    done = CliRunner().invoke(db, ["reencrypt"], env=env, catch_exceptions=False)
    assert done.exit_code == 0 and done.output.startswith("2 stored secret(s)"), done.output
    after = Runtime.create(dataclasses.replace(settings, token_key=Secret(new)))  # the old key dropped
    try:
        with after.sessions() as session:
            account = session.query(Account).one()
            sub = session.get(WebhookSubscription, "wh_1")
            assert sub is not None
            assert json.loads(after.cipher.decrypt_str(account.credentials)) == {"token": "t"}
            assert after.cipher.decrypt_str(sub.secret) == "whsec_abc"
    finally:
        after.close()
    stranger: Any = CliRunner().invoke(db, ["reencrypt"], env={**env, "CALSYNC_TOKEN_KEY": new_key()})
    assert stranger.exit_code == 1 and "2 stored secret(s) no key" in stranger.output
