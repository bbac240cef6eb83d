"""Connecting a Google account: the consent's two halves, without the HTTP around them.

The web layer keeps the pending state and PKCE verifier in the user's session between the halves
and renders the outcome; this module starts Google's consent and, given the code, exchanges it,
identifies the account by its primary calendar and stores it. The first sync and the watch are
left to a worker, so finishing a consent costs two short calls to Google and one commit. A consent
started from an app's connect session stores nothing yet: its tokens wait behind a one-time code
until the app confirms them for its signed-in user (`calsync.accounts.connections`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from google.oauth2.credentials import Credentials
from oauthlib.oauth2.rfc6749.errors import OAuth2Error
from requests import RequestException

from calsync.accounts import connections
from calsync.accounts.connected import record_connected, upsert_account
from calsync.errors import ConfigError, ConnectionUnusable, ConsentError, GoogleApiError, QuotaWait
from calsync.google.calendar import GoogleCalendar
from calsync.google.oauth import authorization_url, make_flow
from calsync.runtime import Runtime
from calsync.store.db import transaction
from calsync.store.states import Priority

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingConsent:
    """What must survive the trip to Google and back: the URL to send the user to, the single-use
    state that ties the answer to this request, and the PKCE verifier."""

    url: str
    state: str
    verifier: str | None


@dataclass(frozen=True)
class Consented:
    """A finished consent: the Google account, and for a connect session the code the app confirms it with."""

    email: str
    connection: str | None = None


def start_consent(runtime: Runtime, login_hint: str | None = None) -> PendingConsent:
    """Google's authorization URL (offline access, PKCE); ConsentError when not configured."""
    try:
        flow = make_flow(runtime.settings)
        url, state = authorization_url(flow, login_hint)
    except ConfigError as err:
        log.error("consent unavailable: %s", err)
        raise _not_configured(err) from err
    return PendingConsent(url=url, state=state, verifier=flow.code_verifier)


def finish_consent(
    runtime: Runtime, state: str, verifier: str | None, code: str, *, link: str | None = None
) -> Consented:
    """Exchange the code, store the account (tokens encrypted), wake a worker.

    `link` is the hash of the connect session the consent came from: the account is then only held,
    and the answer carries the one-time code the app confirms it with.
    """
    try:
        flow = make_flow(runtime.settings, state=state, code_verifier=verifier)
        flow.fetch_token(code=code)
        creds = flow.credentials
    except ConfigError as err:
        raise _not_configured(err) from err
    except OAuth2Error as err:
        log.info("code exchange refused: %s", err.error)
        raise ConsentError(
            "Google refused the sign-in code (it may have expired or been used already).",
            reason="exchange_refused",
            detail=err.error,
        ) from err
    except RequestException as err:
        log.warning("code exchange failed: %s", err)
        raise ConsentError(
            "The sign-in could not be finished because Google did not answer.", reason="google_unreachable"
        ) from err
    try:
        budget = runtime.budget.spender(None, Priority.WRITE)  # a person waits on this page
        email = str(
            GoogleCalendar(creds, runtime.settings.calendar_api_endpoint, budget=budget).get_calendar("primary")["id"]
        )
    except QuotaWait as err:  # a link's user must still be sent back to the app, told why
        log.warning("primary calendar lookup put off by the quota budget: %s", err)
        raise ConsentError(
            "calsync has used its Google quota for the moment: try again in a minute.",
            reason="quota_exhausted",
            detail=str(err),
        ) from err
    except GoogleApiError as err:
        log.warning("primary calendar lookup failed: %s", err)
        raise ConsentError(
            "Google did not let calsync read the account's primary calendar.",
            reason="no_primary_calendar",
            detail=str(err),
        ) from err
    if link is not None:
        try:
            with transaction(runtime.sessions) as db:
                now = runtime.clock.now()
                held = connections.hold(db, runtime.cipher, link, email, creds, granted_scopes(creds), now)
        except ConnectionUnusable:
            connections.release_grant(runtime, email, creds)  # the grant just made serves nothing
            raise
        log.info("account %s consented through a connect link; waiting for the app's confirmation", email)
        return Consented(email, held)
    with transaction(runtime.sessions) as db:
        now = runtime.clock.now()
        account = upsert_account(db, runtime.cipher, email, creds, granted_scopes(creds), now)
        record_connected(db, account, now)
        runtime.wakeup.notify_after_commit(db)
    log.info("account %s connected", email)
    return Consented(email)


def granted_scopes(creds: Credentials) -> list[str]:
    """The scopes Google granted (with include_granted_scopes, possibly more than asked)."""
    scopes: Any = creds.granted_scopes or creds.scopes or []
    if isinstance(scopes, str):
        scopes = scopes.split()
    return sorted(set(scopes))


def _not_configured(err: ConfigError) -> ConsentError:
    return ConsentError(
        "This calsync installation cannot connect Google accounts yet.", reason="not_configured", detail=str(err)
    )
