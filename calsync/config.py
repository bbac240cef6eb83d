"""Settings, read once from the environment into a frozen, typed object.

Nothing here runs at import; `Settings.from_env()` names every malformed variable at once.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from calsync.errors import ConfigError

DEFAULT_SCOPES = ("https://www.googleapis.com/auth/calendar.readonly",)
MAX_TRUSTED_PROXIES = 10


class Secret(str):
    """A string that hides itself in repr and logs."""

    def __repr__(self) -> str:
        return "Secret('**********')"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> timedelta:
    """A duration from '90' (seconds), '90s', '1.5s', '250ms', '15m', '1h', '7d'."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use seconds or a suffix: 90s, 15m, 1h, 7d)")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r} (use 1/0, true/false)")


def _parse_http_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {text!r}")
    return text.strip()


def _parse_db_url(text: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(text)
    except ArgumentError as err:
        raise ValueError(f"not a database URL: {text!r}") from err
    if url.get_backend_name() not in {"sqlite", "postgresql"}:
        raise ValueError(f"unsupported database {url.get_backend_name()!r}: use sqlite:/// or postgresql+psycopg://")
    if url.get_backend_name() == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


@dataclass(frozen=True)
class Settings:
    """Everything calsync reads from its environment."""

    database_url: str = "sqlite:///calsync.db"
    google_client_secrets: Path | None = None
    google_api_url: str = "https://www.googleapis.com/"
    google_revoke_url: str | None = None
    google_scopes: tuple[str, ...] = DEFAULT_SCOPES
    public_url: str = "http://127.0.0.1:8000"
    secret_key: Secret | None = None
    token_key: Secret | None = None
    api_token: Secret | None = None  # one or several comma-separated tokens (see `api_tokens`)
    admin_password: Secret | None = None
    metrics_token: Secret | None = None  # when set, GET /metrics wants it as a bearer token
    # Proxies in front of calsync whose X-Forwarded-For and -Proto are believed (0: none, the
    # client is the connection's peer). Too high, and a client can pretend to be anyone.
    trusted_proxies: int = 0
    channel_ttl: timedelta = timedelta(days=7)
    renew_before: timedelta = timedelta(days=1)
    reconcile_every: timedelta = timedelta(hours=1)
    webhook_allow_http: bool = False
    webhook_allow_private: bool = False
    webhook_timeout: timedelta = timedelta(seconds=15)
    webhook_disable_after: timedelta = timedelta(days=5)
    webhook_verify_timeout: timedelta = timedelta(seconds=5)
    worker_threads: int = 4
    worker_metrics_port: int | None = None  # `calsync worker` serves its own counters here when set
    worker_metrics_host: str = "127.0.0.1"
    # The longest a job may go without progress before its work is given to another worker.
    lease: timedelta = field(default=timedelta(seconds=120), metadata={"env": "CALSYNC_LEASE_SECONDS"})
    # A calendar that changed during its own sync is synced again no sooner than this after that
    # sync began: a burst of changes costs two events.list calls, not one per notification.
    sync_min_interval: timedelta = timedelta(seconds=2)
    notification_log_size: int = 1000
    # Where a connect session may send its user back: `return_to` must start with one of these.
    return_urls: tuple[str, ...] = ()
    # Whether plain `/connect` (no app, no ref, no confirmation) is open; an embedding app turns it off.
    public_connect: bool = True
    # Feed rows older than this are deleted by the worker (0: keep every row).
    changes_retention: timedelta = timedelta(0)
    # Google's quota, with a margin under its limits (10,000/min per project, 600/min per user,
    # 1,000,000/day per project): other clients of the project, the network's reordering and the
    # clocks of several machines all eat into it. 0 turns a limit off.
    quota_per_minute: int = 8000
    quota_per_user_per_minute: int = 480
    quota_per_day: int = 900_000
    # The length of the budget's sliding window; Google's is a minute (shorter only for tests).
    quota_window: timedelta = timedelta(seconds=60)
    instance_path: Path = field(default_factory=lambda: Path("instance").resolve())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read CALSYNC_* variables; raise ConfigError naming every bad one."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        problems: list[str] = []
        for f in dataclasses.fields(cls):
            name = env_name(f)
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = _convert(f.name, raw)
            except ValueError as err:
                problems.append(f"{name}: {err}")
        ttl, renew = values.get("channel_ttl", cls.channel_ttl), values.get("renew_before", cls.renew_before)
        if isinstance(ttl, timedelta) and isinstance(renew, timedelta) and ttl <= renew:
            # Every channel would be due for renewal as soon as it is opened: each job replaced it.
            problems.append(
                f"CALSYNC_CHANNEL_TTL ({ttl}) must be longer than CALSYNC_RENEW_BEFORE ({renew}): "
                "a channel is replaced that long before it expires"
            )
        if problems:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        base = self.google_api_url if self.google_api_url.endswith("/") else self.google_api_url + "/"
        object.__setattr__(self, "google_api_url", base)
        object.__setattr__(self, "public_url", self.public_url.rstrip("/"))
        object.__setattr__(self, "database_url", _parse_db_url(self.database_url))

    # Derived values -------------------------------------------------------------------------
    @property
    def api_tokens(self) -> tuple[Secret, ...]:
        """Every accepted API token: several, comma-separated, let a token be rotated without downtime."""
        if not self.api_token:
            return ()
        return tuple(Secret(t.strip()) for t in self.api_token.split(",") if t.strip())

    @property
    def calendar_api_endpoint(self) -> str:
        return self.google_api_url + "calendar/v3/"

    @property
    def notifications_url(self) -> str:
        return self.public_url + "/notifications"

    @property
    def redirect_uri(self) -> str:
        return self.public_url + "/oauth2callback"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def public_url_is_local_http(self) -> bool:
        """Plain http is tolerated by oauthlib only for loopback development."""
        parts = urlsplit(self.public_url)
        if parts.scheme != "http":
            return False
        host = parts.hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def _parse_return_urls(raw: str) -> tuple[str, ...]:
    """Comma-separated http(s) prefixes. A bare origin gets its `/`, so that `https://app.example.com`
    does not also admit `https://app.example.com.evil.example`."""
    prefixes: list[str] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        parts = urlsplit(_parse_http_url(part))
        if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
            raise ValueError(f"a return URL is a scheme, host and path prefix, without credentials or query: {part!r}")
        prefixes.append(part if parts.path else part + "/")
    if not prefixes:
        raise ValueError("no URL given")
    return tuple(prefixes)


def _whole_number(raw: str, low: int, high: int | None, what: str) -> int:
    if not raw.strip().isdigit() or int(raw) < low or (high is not None and int(raw) > high):
        raise ValueError(f"not {what}: {raw!r}")
    return int(raw)


def env_name(setting: dataclasses.Field[object]) -> str:
    """The variable a setting is read from: CALSYNC_ and its name, unless it keeps an older one."""
    return str(setting.metadata.get("env", "CALSYNC_" + setting.name.upper()))


def _convert(name: str, raw: str) -> object:
    if name in {
        "channel_ttl",
        "renew_before",
        "reconcile_every",
        "webhook_timeout",
        "webhook_disable_after",
        "webhook_verify_timeout",
        "lease",
        "sync_min_interval",
        "quota_window",
    }:
        duration = parse_duration(raw)
        if duration <= timedelta(0):
            raise ValueError("must be positive")
        return duration
    if name == "changes_retention":
        return parse_duration(raw)  # 0 keeps everything
    if name in {"webhook_allow_http", "webhook_allow_private", "public_connect"}:
        return _parse_bool(raw)
    if name in {"worker_threads", "notification_log_size"}:
        return _whole_number(raw, 1, None, "a positive whole number")
    if name in {"quota_per_minute", "quota_per_user_per_minute", "quota_per_day"}:
        return _whole_number(raw, 0, None, "a whole number (0 turns the limit off)")
    if name == "trusted_proxies":
        return _whole_number(raw, 0, MAX_TRUSTED_PROXIES, f"a number of proxy hops (0-{MAX_TRUSTED_PROXIES})")
    if name == "worker_metrics_port":
        return _whole_number(raw, 1, 65535, "a port number (1-65535)")
    if name in {"google_api_url", "public_url", "google_revoke_url"}:
        return _parse_http_url(raw)
    if name == "database_url":
        return _parse_db_url(raw)
    if name == "return_urls":
        return _parse_return_urls(raw)
    if name == "google_scopes":
        scopes = tuple(s for s in re.split(r"[\s,]+", raw) if s)
        if not scopes:
            raise ValueError("no scope given")
        return scopes
    if name in {"google_client_secrets", "instance_path"}:
        return Path(raw).expanduser().resolve()
    if name in {"secret_key", "token_key", "api_token", "admin_password", "metrics_token"}:
        return Secret(raw)
    return raw
