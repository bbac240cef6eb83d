"""Connected accounts and their encrypted credentials, and the lifecycle rows their changes of state write."""

from __future__ import annotations

import json
from datetime import datetime

from google.oauth2.credentials import Credentials
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from calsync.feed.append import append_changes
from calsync.feed.lifecycle import account_change
from calsync.google.oauth import credentials_from_json, credentials_to_json
from calsync.runtime import Runtime
from calsync.store.crypto import TokenCipher
from calsync.store.db import is_postgres, rows_affected
from calsync.store.models import Account, Calendar
from calsync.store.owed import owe_list_refresh, owe_sync
from calsync.store.states import AccountStatus, ChangeType, SyncState


def upsert_account(
    session: Session, cipher: TokenCipher, email: str, creds: Credentials, scopes: list[str], now: datetime
) -> Account:
    """Store or update the account for `email` (never a duplicate) and ask for its calendar list.

    A new account's row is inserted unless one is there already: two consents of one new Google
    account committing at once (two apps' links confirmed together, or a link and `/connect`) both
    found none, and the second insert's unique violation was a 500. Now it waits for the first
    and updates its row.
    """
    account = session.scalar(select(Account).where(Account.email == email))
    if account is None:
        insert = pg_insert if is_postgres(session) else sqlite_insert
        session.execute(
            insert(Account)
            .values(email=email, credentials=b"", scopes=[], created_at=now, list_requested=0, list_done=0)
            .on_conflict_do_nothing(index_elements=[Account.email])
        )
        account = session.scalars(select(Account).where(Account.email == email)).one()
    if not creds.refresh_token and account.credentials:
        # Google sends a refresh token only on some consents; keep the one we have.
        old = _stored_credentials(cipher, account)
        creds = Credentials(
            token=creds.token,
            refresh_token=old.get("refresh_token"),
            token_uri=creds.token_uri,
            client_id=creds.client_id,
            client_secret=creds.client_secret,
            scopes=creds.scopes,
            expiry=creds.expiry,
        )
    account.credentials = cipher.encrypt_str(credentials_to_json(creds))
    account.scopes = list(scopes)
    account.status = AccountStatus.ACTIVE
    account.last_error = None
    account.updated_at = now
    session.flush()
    session.execute(update(Account).where(Account.id == account.id).values(**owe_list_refresh(now, at_once=True)))
    # Calendars of a re-connected account may have stopped on a dead grant: let them run again.
    session.execute(
        update(Calendar)
        .where(Calendar.account_id == account.id, Calendar.removed_at.is_(None))
        .values(**owe_sync(now, at_once=True))
    )
    return account


def record_connected(session: Session, account: Account, now: datetime, *, ref: str | None = None) -> None:
    """A consent completed: the account is the app user's `ref` from now on (when one is given, even
    if it was another's: the account moves, its history stays) and the feed says so."""
    if ref is not None:
        account.ref = ref
    account.connected_at = now
    session.flush()
    append_changes(session, [account_change(ChangeType.ACCOUNT_CONNECTED, account.id)], now)


def load_credentials(runtime: Runtime, account: Account) -> Credentials:
    return credentials_from_stored(runtime, account.credentials)


def credentials_from_stored(runtime: Runtime, stored: bytes) -> Credentials:
    """Credentials from the encrypted column as stored (a sync's claim returns it without the account)."""
    return credentials_from_json(runtime.cipher.decrypt_str(stored), runtime.settings)


def save_if_refreshed(
    session: Session, runtime: Runtime, account_id: int, creds: Credentials, token_before: str | None
) -> bool:
    """Persist a transparently refreshed access token, so restarts do not refresh again."""
    if creds.token == token_before:
        return False
    # A disconnect wipes the credentials; a sync finishing after it must not write them back.
    session.execute(
        update(Account)
        .where(Account.id == account_id, Account.status != AccountStatus.DISCONNECTED)
        .values(credentials=runtime.cipher.encrypt_str(credentials_to_json(creds)), updated_at=runtime.clock.now())
    )
    return True


def mark_reauth_required(session: Session, account_id: int, reason: str, now: datetime) -> None:
    """A dead grant must be visible: the account says so, and its calendars stop asking Google."""
    # Only an active account can become reauth_required: a disconnect racing a sync must stay.
    done = session.execute(
        update(Account)
        .where(Account.id == account_id, Account.status == AccountStatus.ACTIVE)
        .values(status=AccountStatus.REAUTH_REQUIRED, last_error=reason[:1000], updated_at=now)
    )
    if rows_affected(done) == 0:
        return
    session.execute(
        update(Calendar)
        .where(Calendar.account_id == account_id)
        .values(sync_state=SyncState.ERROR, last_error="re-consent required: " + reason[:900])
    )
    append_changes(session, [account_change(ChangeType.ACCOUNT_REAUTH_REQUIRED, account_id, reason=reason)], now)


def _stored_credentials(cipher: TokenCipher, account: Account) -> dict[str, object]:
    return json.loads(cipher.decrypt_str(account.credentials))  # type: ignore[no-any-return]
