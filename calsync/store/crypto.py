"""Encryption at rest for OAuth tokens and webhook secrets (Fernet, with key rotation)."""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from calsync.config import Settings
from calsync.errors import ConfigError
from calsync.store.keyfiles import read_or_create

log = logging.getLogger(__name__)

KEY_FILE = "token.key"


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
            raise ConfigError("stored secrets cannot be decrypted with CALSYNC_TOKEN_KEY (wrong key?)") from err

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
