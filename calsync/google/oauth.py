"""Google's OAuth 2.0 web-server flow (google-auth-oauthlib) and stored credentials."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from google.oauth2.credentials import Credentials
from google_auth_oauthlib.flow import Flow

from calsync.config import Settings
from calsync.errors import ConfigError


@dataclass(frozen=True)
class ClientConfig:
    """The parts of a "web" client-secret file calsync uses."""

    client_id: str
    client_secret: str
    auth_uri: str
    token_uri: str
    raw: dict[str, Any]


def client_config(settings: Settings) -> ClientConfig:
    if settings.google_client_secrets is None:
        raise ConfigError(
            "CALSYNC_GOOGLE_CLIENT_SECRETS is not set: point it at the client_secret JSON "
            "of a web OAuth client (or run `calsync emulator client-secrets`)"
        )
    return _read_client_config(settings.google_client_secrets)


@lru_cache(maxsize=8)
def _read_client_config(path: Path) -> ClientConfig:
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"CALSYNC_GOOGLE_CLIENT_SECRETS: no such file: {path}") from err
    except (OSError, ValueError) as err:
        raise ConfigError(f"CALSYNC_GOOGLE_CLIENT_SECRETS: not a readable JSON file: {path}: {err}") from err
    web = raw.get("web") if isinstance(raw, dict) else None
    if not isinstance(web, dict):
        raise ConfigError(f'CALSYNC_GOOGLE_CLIENT_SECRETS: {path} is not a client secret of the "web" kind')
    missing = [k for k in ("client_id", "client_secret", "auth_uri", "token_uri") if not web.get(k)]
    if missing:
        raise ConfigError(f"CALSYNC_GOOGLE_CLIENT_SECRETS: {path} lacks {', '.join(missing)}")
    return ClientConfig(web["client_id"], web["client_secret"], web["auth_uri"], web["token_uri"], raw)


def prepare_oauthlib_env(settings: Settings) -> None:
    """oauthlib reads these from the environment; set them as calsync's contract promises."""
    os.environ["OAUTHLIB_RELAX_TOKEN_SCOPE"] = "1"
    if settings.public_url_is_local_http:
        os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"


def make_flow(settings: Settings, *, state: str | None = None, code_verifier: str | None = None) -> Flow:
    """A Flow with PKCE; the verifier of the Flow that made the URL must be given back for the exchange."""
    cfg = client_config(settings)
    prepare_oauthlib_env(settings)
    flow = Flow.from_client_config(
        cfg.raw,
        scopes=list(settings.google_scopes),
        state=state,
        redirect_uri=settings.redirect_uri,
        code_verifier=code_verifier,
        autogenerate_code_verifier=True,
    )
    return flow


def authorization_url(flow: Flow, login_hint: str | None = None) -> tuple[str, str]:
    """Offline access, consent asked every time (so a refresh token comes back); `login_hint` picks the account."""
    extra = {"login_hint": login_hint} if login_hint else {}
    url, state = flow.authorization_url(access_type="offline", prompt="consent", include_granted_scopes="true", **extra)
    return str(url), str(state)


def credentials_to_json(creds: Credentials) -> str:
    """Serialise what is needed to act for the user; `token_uri` is kept explicitly."""
    return json.dumps(
        {
            "token": creds.token,
            "refresh_token": creds.refresh_token,
            "token_uri": creds.token_uri,
            "scopes": list(creds.granted_scopes or creds.scopes or []),
            "expiry": creds.expiry.replace(tzinfo=UTC).isoformat() if creds.expiry else None,
        }
    )


def credentials_from_json(text: str, settings: Settings) -> Credentials:
    """Rebuild Credentials with an explicit token_uri (from_authorized_user_info would reset it)."""
    data = json.loads(text)
    cfg = client_config(settings)
    expiry = None
    if data.get("expiry"):
        # google-auth compares expiry with a naive UTC now.
        expiry = datetime.fromisoformat(data["expiry"]).astimezone(UTC).replace(tzinfo=None)
    return Credentials(
        token=data.get("token"),
        refresh_token=data.get("refresh_token"),
        token_uri=data.get("token_uri") or cfg.token_uri,
        client_id=cfg.client_id,
        client_secret=cfg.client_secret,
        scopes=data.get("scopes") or None,
        expiry=expiry,
    )


def revoke_url(settings: Settings) -> str:
    if settings.google_revoke_url:
        return settings.google_revoke_url
    parts = urlsplit(client_config(settings).token_uri)
    return urlunsplit((parts.scheme, parts.netloc, "/revoke", "", ""))


def revoke(settings: Settings, token: str, *, timeout: float = 10.0) -> bool:
    """Ask Google to revoke the grant; True when it did (or the token was already dead).

    Google's revocation takes the token in the query string, so requests' own errors name it (their
    text holds the URL): a failure is raised again without it, since callers log it, and the token
    still works when the revocation did not happen.
    """
    url = revoke_url(settings)
    try:
        resp = requests.post(
            url,
            params={"token": token},
            headers={"content-type": "application/x-www-form-urlencoded"},
            timeout=timeout,
        )
    except requests.RequestException as err:
        raise type(err)(f"{type(err).__name__} reaching {urlsplit(url).netloc}") from None
    return resp.status_code == 200 or (resp.status_code == 400 and "invalid_token" in resp.text)
