"""Tokens are encrypted at rest; without CALSYNC_TOKEN_KEY a key is generated once, privately."""

from __future__ import annotations

import logging
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.oauth2.credentials import Credentials
from sqlalchemy import text

from calsync.accounts.connected import upsert_account
from calsync.config import Settings
from calsync.errors import ConfigError
from calsync.runtime import Runtime
from calsync.store.crypto import KEY_FILE, TokenCipher, cipher_from_settings, new_key, reencrypt_stored
from calsync.store.db import make_engine, make_sessionmaker, transaction
from calsync.store.models import WebhookSubscription
from calsync.webhooks.subscriptions import SubscriptionSpec, add_subscription, rotate_secret, signing_secrets

ACCESS = "ya29.a0-access-token-that-must-not-leak"
REFRESH = "1//0g-refresh-token-that-must-not-leak"


def test_missing_key_is_generated_once_with_mode_0600_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(database_url="sqlite://", token_key=None, instance_path=tmp_path / "instance")
    with caplog.at_level(logging.WARNING, logger="calsync.store.crypto"):
        first = cipher_from_settings(settings)
    key_file = tmp_path / "instance" / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "CALSYNC_TOKEN_KEY" in r.getMessage()]
    assert len(warnings) == 1 and str(key_file) in warnings[0].getMessage()

    key = key_file.read_bytes()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="calsync.store.crypto"):
        second = cipher_from_settings(settings)
    assert not caplog.records, "an existing key is reused silently"
    assert second.decrypt_str(first.encrypt_str("secret")) == "secret"
    assert key_file.read_bytes() == key


def test_configured_key_writes_no_file(tmp_path: Path) -> None:
    settings = Settings(database_url="sqlite://", token_key=new_key(), instance_path=tmp_path / "instance")  # type: ignore[arg-type]
    cipher_from_settings(settings)
    assert not (tmp_path / "instance" / KEY_FILE).exists()


def test_key_rotation_decrypts_old_ciphertext_and_encrypts_with_the_new_key() -> None:
    old, new = new_key(), new_key()
    ciphertext = TokenCipher([old.encode()]).encrypt_str("payload")
    rotated = cipher_from_settings(Settings(database_url="sqlite://", token_key=f"{new},{old}"))  # type: ignore[arg-type]
    assert rotated.decrypt_str(ciphertext) == "payload"
    assert TokenCipher([new.encode()]).decrypt_str(rotated.encrypt_str("x")) == "x"


def test_wrong_key_is_a_config_error_not_garbage() -> None:
    ciphertext = TokenCipher([new_key().encode()]).encrypt_str("payload")
    with pytest.raises(ConfigError, match="CALSYNC_TOKEN_KEY"):
        TokenCipher([new_key().encode()]).decrypt_str(ciphertext)


def test_malformed_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Fernet"):
        cipher_from_settings(Settings(database_url="sqlite://", token_key="not-a-key"))  # type: ignore[arg-type]


def test_stored_credentials_hold_no_token_in_clear(db_url: str, tmp_path: Path) -> None:
    cipher = cipher_from_settings(Settings(database_url=db_url, token_key=None, instance_path=tmp_path))
    engine = make_engine(db_url)
    try:
        creds = Credentials(
            token=ACCESS,
            refresh_token=REFRESH,
            token_uri="http://127.0.0.1:1/token",
            client_id="cid",
            client_secret="csecret",
            expiry=(datetime.now(UTC) + timedelta(hours=1)).replace(tzinfo=None),
        )
        with transaction(make_sessionmaker(engine)) as session:
            upsert_account(
                session,
                cipher,
                "alice@example.com",
                creds,
                ["https://www.googleapis.com/auth/calendar.readonly"],
                datetime.now(UTC),
            )
        with engine.connect() as conn:
            raw = conn.execute(text("SELECT credentials FROM accounts WHERE email = 'alice@example.com'")).scalar_one()
            dump = "\n".join(str(row) for row in conn.execute(text("SELECT * FROM accounts")))
        raw = bytes(raw)
        for secret in (ACCESS, REFRESH, "csecret"):
            assert secret.encode() not in raw
            assert secret not in dump
        plain = cipher.decrypt_str(raw)
        assert ACCESS in plain and REFRESH in plain
    finally:
        engine.dispose()


def test_reencrypting_leaves_a_secret_rotated_meanwhile_as_it_was_rotated(runtime: Runtime) -> None:
    """`calsync db reencrypt` wrote back the value it had read: a webhook secret rotated between its
    read and its write (a leaked one replaced) came back, and calsync signed with it again."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("a SQLite transaction holds the write lock from its BEGIN: no rotation comes in between")
    key = runtime.settings.token_key
    assert key is not None
    with transaction(runtime.sessions) as session:
        spec = SubscriptionSpec(url="https://example.com/h", events=["*"], calendars=None)
        sub_id = add_subscription(session, runtime.cipher, spec, runtime.clock.now())[0].id
    both = TokenCipher([new_key().encode(), key.encode()])  # a new first key
    real_rotate, rotated = both.rotate, list[str]()

    def rotate(token: bytes) -> bytes:
        if not rotated:  # the operator rotates the secret while reencrypt is in its batch
            with transaction(runtime.sessions) as other:
                sub = other.get_one(WebhookSubscription, sub_id, with_for_update=True)
                rotated.append(rotate_secret(both, sub, runtime.clock.now(), grace_seconds=0))
        return real_rotate(token)

    both.rotate = rotate  # type: ignore[method-assign]
    reencrypt_stored(runtime.sessions, both)
    with runtime.sessions() as session:
        sub = session.get_one(WebhookSubscription, sub_id)
        assert signing_secrets(sub, both, runtime.clock.now()) == rotated
