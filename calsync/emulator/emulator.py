"""``Emulator``: a local Google (OAuth 2.0 + Calendar API v3 + push) and its Python API.

The methods without a leading underscore are what people do in Google Calendar (edits that bypass
OAuth but behave like the Calendar UI) plus test controls; the ``_api_*`` methods serve the HTTP
handlers.  State lives in ``store``/``grants``/``push``; every write notifies push after the lock.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from . import events, listing
from .errors import ApiError
from .faults import AfterWriteRule, FailRule, Faults, SlowRule
from .grants import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Grants
from .push import PushFaults, PushHub, PushRecord, new_channel
from .quota import Quota
from .store import Calendar, ListEntry, Store, User, new_id

HTML_BASE = "https://www.google.com"
PROJECT_NUMBER = DEFAULT_CLIENT_ID.split("-", 1)[0]
READONLY = "https://www.googleapis.com/auth/calendar.readonly"
WRITER_ROLES = ("owner", "writer")

_T = TypeVar("_T")


@dataclass(frozen=True)
class ApiRequest:
    """One request the emulator served (OAuth or Calendar API), for tests to count and inspect."""

    time: dt.datetime
    http_method: str
    path: str
    api_method: str
    params: dict[str, Any]
    calendar_id: str | None
    user: str | None
    status: int


def utcnow() -> dt.datetime:
    """The default clock: real time, aware UTC."""
    return dt.datetime.now(dt.UTC)


class Emulator:
    """Google for tests and demos: start it, point calsync at ``api_url``, edit calendars here."""

    def __init__(
        self,
        access_token_ttl: int = 3600,
        max_channel_ttl: int = 30 * 86400,
        seed: int | None = None,
        *,
        clock: Callable[[], dt.datetime] | None = None,
        push_workers: int = 4,
        push_retry_base: float = 0.2,
        push_max_attempts: int = 4,
        push_timeout: float = 5.0,
        sync_token_max_age: float | None = None,
        log_size: int = 200_000,
        keep_alive: int = 10,
    ) -> None:
        self.keep_alive = keep_alive  # whole seconds an idle connection stays open (Google closes idle ones too)
        self.clock: Callable[[], dt.datetime] = clock or utcnow
        self.access_token_ttl = access_token_ttl
        self.max_channel_ttl = max_channel_ttl
        self.sync_token_max_age = sync_token_max_age
        self.auto_approve: str | None = None
        self._defaults = (access_token_ttl, max_channel_ttl, sync_token_max_age)
        self.store = Store()
        self.grants = Grants(lambda: self.clock())
        self.push = PushHub(
            lambda: self.clock(),
            seed=seed,
            workers=push_workers,
            retry_base=push_retry_base,
            max_attempts=push_max_attempts,
            timeout=push_timeout,
        )
        self.faults = Faults()
        self.quota = Quota()
        self._pending_consents: dict[str, dict[str, Any]] = {}
        self._log: deque[ApiRequest] = deque(maxlen=log_size)
        self._log_lock = threading.Lock()
        self._server: Any = None
        self._url: str | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> Emulator:
        """Serve in a background thread (a threaded HTTP server); returns self."""
        from .server import ServerThread, create_app

        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._server = ServerThread(create_app(self), host, port, keep_alive=self.keep_alive)
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        self._url = f"http://{shown}:{self._server.port}"
        self._server.start()
        self.push.start()
        return self

    def stop(self) -> None:
        """Stop serving and delivering."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.push.shutdown()

    def reset(self) -> None:
        """Clear users, calendars, tokens, channels, logs and faults; keep serving."""
        self.store.clear()
        self.grants.clear()
        self.push.clear()
        self.faults.clear()
        self.quota.clear()
        with self._log_lock:
            self._log.clear()
        self._pending_consents.clear()
        self.auto_approve = None
        self.access_token_ttl, self.max_channel_ttl, self.sync_token_max_age = self._defaults

    def __enter__(self) -> Emulator:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        if self._url is None:
            raise RuntimeError("emulator not started")
        return self._url

    @property
    def api_url(self) -> str:
        """Root of the Google APIs (what ``CALSYNC_GOOGLE_API_URL`` is); Calendar is under calendar/v3/."""
        return self.url + "/"

    # --- OAuth clients -----------------------------------------------------------------------
    def client_config(self, redirect_uris: list[str]) -> dict[str, Any]:
        """A Google "web" client-secret dict for this emulator, registering the redirect URIs."""
        self.grants.register(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, list(redirect_uris))
        return client_config(self.url, redirect_uris)

    def write_client_secrets(self, path: str | Path, redirect_uris: list[str]) -> Path:
        """Write :meth:`client_config` as a client_secret JSON file; returns the path."""
        target = Path(path)
        target.write_text(json.dumps(self.client_config(redirect_uris), indent=2) + "\n")
        return target

    # --- people editing Google Calendar -------------------------------------------------------
    def create_user(self, email: str, name: str | None = None) -> str:
        """Create an account and its primary calendar (id == email); idempotent."""
        email = email.strip().lower()
        if "@" not in email:
            raise ValueError(f"not an email address: {email!r}")
        with self.store.lock:
            if email in self.store.users:
                return email
            user = self.store.users[email] = User(email=email, name=name or email.split("@")[0].title())
            self.store.calendars[email] = Calendar(
                id=email, summary=email, time_zone="UTC", owner=email, updated=self.clock()
            )
            self._add_entry(user, email, primary=True)
        return email

    def create_calendar(self, email: str, summary: str, time_zone: str = "UTC") -> str:
        """Create a secondary calendar on the user's list (fires calendarList push)."""
        with self.store.lock:
            user = self.store.user(email)
            cal_id = f"{new_id(26)}@group.calendar.google.com"
            self.store.calendars[cal_id] = Calendar(
                id=cal_id, summary=summary, time_zone=time_zone, owner=user.email, updated=self.clock()
            )
            self._add_entry(user, cal_id, primary=False)
        self.push.notify("calendarList:" + user.email)
        return cal_id

    def share_calendar(self, calendar_id: str, email: str, role: str = "reader") -> None:
        """Put another user's calendar on ``email``'s list with ``role`` (fires calendarList push).

        A ``reader`` sees its events (a private one's time only) and a ``freeBusyReader`` the time of
        each (a public one's details too); a write by either gets Google's 403 ``requiredAccessLevel``.
        """
        if role not in ("owner", "writer", "reader", "freeBusyReader"):
            raise ValueError(f"unknown access role {role!r}")
        with self.store.lock:
            user = self.store.user(email)
            self.store.calendar(calendar_id)
            entry = user.entries.get(calendar_id)
            if entry is not None and not entry.deleted:
                entry.role, entry.seq = role, self.store.next_seq()
            else:
                user.entries[calendar_id] = ListEntry(
                    calendar_id, False, self.store.next_seq(), len(user.entries), role=role
                )
        self.push.notify("calendarList:" + user.email)

    def remove_calendar(self, email: str, calendar_id: str) -> None:
        """Take a calendar off the user's list (fires calendarList push); the API then gives 404."""
        with self.store.lock:
            user = self.store.user(email)
            entry = user.entries.get(calendar_id)
            if entry is None or entry.deleted:
                raise ApiError(404, "notFound", f"{calendar_id} is not on {email}'s calendar list")
            if entry.primary:
                raise ApiError(400, "cannotDeletePrimaryCalendar", "The primary calendar cannot be removed.")
            entry.deleted, entry.seq = True, self.store.next_seq()
        self.push.notify("calendarList:" + user.email)

    def hide_calendar(self, email: str, calendar_id: str, hidden: bool = True) -> None:
        """Hide a calendar from the user's list, or show it again, as the Calendar UI does (fires
        calendarList push). A full calendarList.list leaves hidden entries out unless showHidden."""
        with self.store.lock:
            user = self.store.user(email)
            entry = user.entries.get(calendar_id)
            if entry is None or entry.deleted:
                raise ApiError(404, "notFound", f"{calendar_id} is not on {email}'s calendar list")
            entry.hidden, entry.seq = hidden, self.store.next_seq()
        self.push.notify("calendarList:" + user.email)

    def insert_event(self, calendar_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create an event as its owner would in the Calendar UI; returns the stored JSON."""
        return self._edit(
            calendar_id, lambda cal, now: events.insert(self.store, cal, body, cal.owner, now, HTML_BASE).data
        )

    def bulk_insert_events(self, calendar_id: str, bodies: Iterable[dict[str, Any]]) -> int:
        """Insert many events at once (one push notification at the end); returns the count."""

        def insert_all(cal: Calendar, now: dt.datetime) -> int:
            count = 0
            for body in bodies:
                events.insert(self.store, cal, body, cal.owner, now, HTML_BASE)
                count += 1
            return count

        return self._edit(calendar_id, insert_all)

    def patch_event(self, calendar_id: str, event_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change some fields (JSON-merge like events.patch)."""
        return self._edit(
            calendar_id, lambda cal, now: events.patch(self.store, cal, event_id, changes, now, HTML_BASE).data
        )

    def force_event_fields(self, calendar_id: str, event_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Set fields of a stored event with no validation at all, as a change listed like any other.

        For what Google's own checks would not let a client write but a consumer must survive all
        the same (an undocumented value, an oversized etag, a field of an unexpected type).
        """

        def force(cal: Calendar, now: dt.datetime) -> dict[str, Any]:
            record = cal.events[event_id]
            seq = self.store.next_seq()
            data = dict(record.data)
            events.stamp(data, now, seq)  # a change moves `updated` and the etag, as every change in Google
            record.data = {**data, **fields}
            record.seq = seq
            cal.updated, cal.seq = now, seq
            return record.data

        return self._edit(calendar_id, force)

    def update_event(self, calendar_id: str, event_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Replace the event's writable fields (like events.update)."""
        return self._edit(
            calendar_id,
            lambda cal, now: events.patch(self.store, cal, event_id, body, now, HTML_BASE, replace=True).data,
        )

    def delete_event(self, calendar_id: str, event_id: str) -> None:
        """Cancel an event; it stays as a tombstone so sync tokens report it."""
        self._edit(calendar_id, lambda cal, now: events.delete(self.store, cal, event_id, now, HTML_BASE))

    def patch_instance(
        self, calendar_id: str, series_id: str, original_start: str, changes: dict[str, Any]
    ) -> dict[str, Any]:
        """Modify one occurrence: it becomes an exception ``<seriesId>_<originalStart>``."""

        def apply(cal: Calendar, now: dt.datetime) -> dict[str, Any]:
            event_id = events.instance_id(series_id, events.parse_original_start(original_start, cal))
            return events.patch(self.store, cal, event_id, changes, now, HTML_BASE).data

        return self._edit(calendar_id, apply)

    def cancel_instance(self, calendar_id: str, series_id: str, original_start: str) -> dict[str, Any]:
        """Cancel one occurrence (a cancelled exception)."""
        return self.patch_instance(calendar_id, series_id, original_start, {"status": "cancelled"})

    def events(self, calendar_id: str, include_cancelled: bool = False) -> list[dict[str, Any]]:
        """What Google holds for the calendar: series and exceptions, not expanded, API-shaped."""
        with self.store.lock:
            cal = self.store.calendar(calendar_id)
            out = [events.public(cal.events[i].data) for i in cal.order]
            return copy.deepcopy([e for e in out if include_cancelled or e.get("status") != "cancelled"])

    # --- tokens -------------------------------------------------------------------------------
    def issue_tokens(
        self, email: str, scopes: Iterable[str] = (READONLY,), offline: bool = True, client_id: str = DEFAULT_CLIENT_ID
    ) -> dict[str, Any]:
        """Tokens as after consent, without the consent page (for tests)."""
        with self.store.lock:
            user = self.store.user(email)
        wanted = set(scopes)
        grant = self.grants.grant(user.email, client_id, wanted, include_granted=False)
        return self.grants.issue(grant, frozenset(wanted), self.access_token_ttl, offline)

    def revoke_grant(self, email: str) -> None:
        """The user removes the app's access: API calls give 401, refreshes ``invalid_grant``."""
        self.grants.revoke_user(email.lower())

    def expire_access_tokens(self) -> None:
        """Every current access token expires now (refresh tokens still work)."""
        self.grants.expire_access_tokens()

    # --- faults -------------------------------------------------------------------------------
    def fail_next(
        self,
        n: int,
        status: int = 429,
        reason: str = "rateLimitExceeded",
        retry_after: int | None = None,
        method: str | None = None,
        calendar_id: str | None = None,
    ) -> None:
        """The next ``n`` matching Calendar API calls fail with Google's error envelope."""
        self.faults.add(FailRule(n, status, reason, retry_after, method, calendar_id))

    def fail_after_write(
        self,
        n: int = 1,
        *,
        hold: float = 0.0,
        status: int | None = 503,
        reason: str = "backendError",
        method: str | None = None,
        calendar_id: str | None = None,
    ) -> None:
        """The next ``n`` matching writes are made, then answered ``hold`` seconds late and, with a
        ``status``, as that error: the caller (or its process, killed meanwhile) never learns of them."""
        self.faults.after_write(AfterWriteRule(n, hold, status, reason, method, calendar_id))

    def slow_next(self, n: int, seconds: float, method: str | None = None, calendar_id: str | None = None) -> None:
        """The next ``n`` matching Calendar API calls are answered ``seconds`` late."""
        self.faults.slow(SlowRule(n, seconds, method, calendar_id))

    def enforce_quota(self, per_project: int | None = None, per_user: int | None = None, window: float = 60.0) -> None:
        """Refuse Calendar API calls over these limits per sliding window, as Google does (None: no limit)."""
        self.quota.configure(per_project, per_user, window)

    def invalidate_sync_tokens(self, calendar_id: str | None = None) -> None:
        """Every sync token issued so far (one calendar's, or all) now gives 410 fullSyncRequired."""
        with self.store.lock:
            floor = self.store.next_seq()
            if calendar_id is not None:
                self.store.calendar(calendar_id).token_floor = floor
                return
            for cal in self.store.calendars.values():
                cal.token_floor = floor
            for user in self.store.users.values():
                user.token_floor = floor

    def push_faults(self, drop: float = 0.0, duplicate: float = 0.0, delay: float = 0.0, reorder: bool = False) -> None:
        """Make push lossy: drop/duplicate probabilities, extra delay (s), out-of-order delivery."""
        for value in (drop, duplicate):
            if not 0.0 <= value <= 1.0:
                raise ValueError("drop and duplicate are probabilities in [0, 1]")
        if delay < 0:
            raise ValueError("delay must be >= 0")
        self.push.faults = PushFaults(drop, duplicate, delay, reorder)

    # --- logs ---------------------------------------------------------------------------------
    @property
    def requests(self) -> list[ApiRequest]:
        """Snapshot of every OAuth and Calendar API request served, oldest first."""
        with self._log_lock:
            return list(self._log)

    def count(self, api_method: str, calendar_id: str | None = None) -> int:
        """How many requests of ``api_method`` (optionally on one calendar) were served."""
        with self._log_lock:
            return sum(
                1
                for r in self._log
                if r.api_method == api_method and (calendar_id is None or r.calendar_id == calendar_id)
            )

    @property
    def notifications(self) -> list[PushRecord]:
        """Snapshot of push deliveries (and drops), in completion order."""
        with self.push._cond:
            return list(self.push.records)

    def channels(self) -> list[dict[str, Any]]:
        """Live channels (neither stopped nor expired)."""
        return [c.as_dict() for c in self.push.live()]

    def wait_push_idle(self, timeout: float = 5.0) -> bool:
        """True once no notification is queued or in flight."""
        return self.push.wait_idle(timeout)

    # --- serving the HTTP API -----------------------------------------------------------------
    def _api_calendar_list(self, user: str, params: dict[str, list[str]]) -> dict[str, Any]:
        with self.store.lock:
            return listing.list_calendars(
                self.store, self.store.user(user), params, self.clock(), self.sync_token_max_age
            )

    def _api_calendar_list_entry(self, user: str, calendar_id: str) -> dict[str, Any]:
        with self.store.lock:
            owner = self.store.user(user)
            cal = self.store.calendar_for(owner, calendar_id)
            return listing.calendar_entry(self.store, owner, cal.id)

    def _api_calendar(self, user: str, calendar_id: str) -> dict[str, Any]:
        with self.store.lock:
            return listing.calendar_resource(self.store.calendar_for(self.store.user(user), calendar_id))

    def _api_list_events(self, user: str, calendar_id: str, params: dict[str, list[str]]) -> dict[str, Any]:
        with self.store.lock:
            owner = self.store.user(user)
            cal = self.store.calendar_for(owner, calendar_id)
            role = owner.entries[cal.id].role
            return listing.list_events(self.store, cal, role, params, self.clock(), self.sync_token_max_age)

    def _api_instances(
        self, user: str, calendar_id: str, event_id: str, params: dict[str, list[str]]
    ) -> dict[str, Any]:
        with self.store.lock:
            owner = self.store.user(user)
            cal = self.store.calendar_for(owner, calendar_id)
            return listing.list_instances(self.store, cal, owner.entries[cal.id].role, event_id, params, self.clock())

    def _api_get_event(self, user: str, calendar_id: str, event_id: str) -> dict[str, Any]:
        with self.store.lock:
            owner = self.store.user(user)
            cal = self.store.calendar_for(owner, calendar_id)
            found = events.get(self.store, cal, event_id, self.clock())
            return copy.deepcopy(events.shown(found, owner.entries[cal.id].role))

    def _api_write(
        self,
        user: str,
        calendar_id: str,
        op: str,
        event_id: str | None,
        body: dict[str, Any] | None,
        if_match: str | None = None,
    ) -> dict[str, Any] | None:
        """A write as Google checks it: writer access to the calendar, then the If-Match etag."""
        with self.store.lock:
            owner = self.store.user(user)
            cal = self.store.calendar_for(owner, calendar_id)
            if owner.entries[cal.id].role not in WRITER_ROLES:
                raise ApiError(403, "requiredAccessLevel")
            now = self.clock()
            if if_match is not None and op != "insert":
                current = events.get(self.store, cal, event_id or "", now)
                if current.get("etag") != if_match:
                    raise ApiError(412, "conditionNotMet")
            if op == "insert":
                result = events.insert(self.store, cal, body or {}, user, now, HTML_BASE).data
            elif op == "delete":
                events.delete(self.store, cal, event_id or "", now, HTML_BASE)
                result = None
            else:
                result = events.patch(
                    self.store, cal, event_id or "", body or {}, now, HTML_BASE, replace=op == "update"
                ).data
            result = copy.deepcopy(result)
        self.push.notify("events:" + cal.id)
        return result

    def _api_watch(
        self, user: str, calendar_id: str | None, body: Mapping[str, Any], client_id: str | None
    ) -> dict[str, Any]:
        with self.store.lock:
            owner = self.store.user(user)
            if calendar_id is None:
                resource = "calendarList:" + owner.email
                uri = f"{self.api_url}calendar/v3/users/me/calendarList?alt=json"
            else:
                cal = self.store.calendar_for(owner, calendar_id)
                resource = "events:" + cal.id
                uri = f"{self.api_url}calendar/v3/calendars/{quote(cal.id, safe='')}/events?alt=json"
            epoch = self.store.epoch
        channel = new_channel(body, resource, uri, owner.email, client_id, epoch, self.clock(), self.max_channel_ttl)
        with self.push._cond:
            if any(c.id == channel.id for c in self.push.live()):
                raise ApiError(400, "channelIdNotUnique", "Channel id not unique")
            self.push.open(channel)
        out: dict[str, Any] = {
            "kind": "api#channel",
            "id": channel.id,
            "resourceId": channel.resource_id,
            "resourceUri": channel.resource_uri,
        }
        if channel.token is not None:
            out["token"] = channel.token
        out["expiration"] = str(int(channel.expiration.timestamp() * 1000))
        return out

    def _api_stop_channel(self, user: str, channel_id: Any, resource_id: Any, client_id: str | None) -> None:
        live = {c.id: c for c in self.push.live()}
        channel = live.get(channel_id) if isinstance(channel_id, str) else None
        if (
            channel is None
            or channel.user != user
            or channel.client_id != client_id
            or (resource_id is not None and resource_id != channel.resource_id)
        ):
            raise ApiError(404, "notFound", f"Channel '{channel_id}' not found for project '{PROJECT_NUMBER}'")
        self.push.stop(channel.id)

    def _record(
        self,
        api_method: str,
        http_method: str,
        path: str,
        args: Any,
        calendar_id: str | None,
        user: str | None,
        status: int,
    ) -> None:
        params = {k: (v[0] if len(v) == 1 else v) for k, v in args.lists()}
        with self._log_lock:
            self._log.append(ApiRequest(self.clock(), http_method, path, api_method, params, calendar_id, user, status))

    # --- helpers ------------------------------------------------------------------------------
    def _edit(self, calendar_id: str, apply: Callable[[Calendar, dt.datetime], _T]) -> _T:
        with self.store.lock:
            cal = self.store.calendar(calendar_id)
            result = copy.deepcopy(apply(cal, self.clock()))
        self.push.notify("events:" + cal.id)
        return result

    def _add_entry(self, user: User, calendar_id: str, primary: bool) -> None:
        user.entries[calendar_id] = ListEntry(calendar_id, primary, self.store.next_seq(), len(user.entries))


def client_config(url: str, redirect_uris: list[str]) -> dict[str, Any]:
    """The "web" client-secret dict pointing at an emulator at ``url`` (deterministic credentials)."""
    return {
        "web": {
            "client_id": DEFAULT_CLIENT_ID,
            "project_id": "calsync-emulator",
            "auth_uri": f"{url}/o/oauth2/auth",
            "token_uri": f"{url}/token",
            "auth_provider_x509_cert_url": f"{url}/oauth2/v1/certs",
            "client_secret": DEFAULT_CLIENT_SECRET,
            "redirect_uris": list(redirect_uris),
        }
    }
