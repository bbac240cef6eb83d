"""Encryption at rest for OAuth tokens and webhook secrets (Fernet, with key rotation)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from calsync.config import Settings
from calsync.errors import ConfigError
from calsync.store.db import rows_affected
from calsync.store.keyfiles import read_or_create
from calsync.store.models import Account, ConnectSession, WebhookSubscription

log = logging.getLogger(__name__)

KEY_FILE = "token.key"
UNREADABLE = "stored secrets cannot be decrypted with CALSYNC_TOKEN_KEY (wrong key?)"


class TokenCipher:
    """Encrypts with the first key, decrypts with any: rotate by putting a new key first."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ConfigError("CALSYNC_TOKEN_KEY: no key given")
        try:
            self._fernet = MultiFernet([Fernet(k) for k in keys])
        except (ValueError, TypeError) as err:
            raise ConfigError("CALSYNC_TOKEN_KEY: not a Fernet key (run `calsync keygen`)") from err

    def encrypt(self, plain: bytes) -> bytes:
        return self._fernet.encrypt(plain)

    def decrypt(self, token: bytes) -> bytes:
        try:
            return self._fernet.decrypt(token)
        except InvalidToken as err:
            raise ConfigError(UNREADABLE) from err

    def rotate(self, token: bytes) -> bytes:
        """The same secret, encrypted again with the first key."""
        try:
            return self._fernet.rotate(token)
        except InvalidToken as err:
            raise ConfigError(UNREADABLE) from err

    def encrypt_str(self, plain: str) -> bytes:
        return self.encrypt(plain.encode())

    def decrypt_str(self, token: bytes) -> str:
        return self.decrypt(token).decode()


def new_key() -> str:
    return Fernet.generate_key().decode()


def cipher_from_settings(settings: Settings) -> TokenCipher:
    """Use CALSYNC_TOKEN_KEY (comma-separated for rotation) or a key kept in the instance folder."""
    if settings.token_key:
        return TokenCipher([k.strip().encode() for k in settings.token_key.split(",") if k.strip()])
    return TokenCipher([_instance_key(settings.instance_path)])


def _instance_key(folder: Path) -> bytes:
    path = folder / KEY_FILE
    key, created = read_or_create(path, Fernet.generate_key)
    if created:
        log.warning("CALSYNC_TOKEN_KEY is not set: generated a key in %s; back it up or set the variable", path)
    return key


@dataclass
class Reencrypted:
    """What `reencrypt_stored` did: values now under the first key, and those no key decrypts."""

    done: int = 0
    unreadable: int = 0


# Every column that holds a Fernet token: (table, key column, value column).
_ENCRYPTED = (
    (Account.__table__, "id", "credentials"),
    (ConnectSession.__table__, "token_hash", "credentials"),
    (WebhookSubscription.__table__, "id", "secret"),
    (WebhookSubscription.__table__, "id", "previous_secret"),
)


def reencrypt_stored(sessions: sessionmaker[Session], cipher: TokenCipher, batch: int = 500) -> Reencrypted:
    """Encrypt every stored secret again with the first key of CALSYNC_TOKEN_KEY, so that the keys
    after it can be removed. Until this runs, a value is moved to the new key only when something
    rewrites it (a token refresh), and removing an old key left the rest unreadable for good.

    In batches, each its own transaction; a value no key decrypts is counted and left as it is.
    """
    result = Reencrypted()
    for table, key_name, value_name in _ENCRYPTED:
        key, value = table.c[key_name], table.c[value_name]
        after: object = None
        while True:
            with sessions.begin() as session:
                query = select(key, value).where(value.is_not(None)).order_by(key).limit(batch)
                if after is not None:
                    query = query.where(key > after)
                rows = session.execute(query).all()
                for row_key, token in rows:
                    try:
                        fresh = cipher.rotate(token)
                    except ConfigError:
                        result.unreadable += 1
                        continue
                    # Only if the value is still the one read: a secret rotated or a token refreshed
                    # meanwhile (a write of its own, with the first key already) is not taken back.
                    moved = session.execute(
                        update(table).where(key == row_key, value == token).values({value_name: fresh})
                    )
                    result.done += rows_affected(moved)
            if len(rows) < batch:
                break
            after = rows[-1][0]
    return result
