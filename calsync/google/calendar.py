"""A thin client over googleapiclient's Calendar v3, with Google's errors mapped in one place."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any, Protocol, cast

import google_auth_httplib2
import httplib2
import orjson
from google.auth.exceptions import RefreshError, TransportError
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import Resource, build_from_document
from googleapiclient.errors import HttpError
from urllib3.util.wait import wait_for_read

from calsync.clock import day_ends, parse_retry_after
from calsync.errors import (
    AuthRevoked,
    BackendError,
    CalendarUsageLimited,
    Duplicate,
    Forbidden,
    GoogleApiError,
    GoogleNotFound,
    PreconditionFailed,
    RateLimited,
    SyncTokenExpired,
)
from calsync.metrics import GOOGLE_CALLS

EVENTS_PAGE_SIZE = 2500
CALENDAR_LIST_PAGE_SIZE = 250
RATE_LIMIT_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "dailyLimitExceeded"}
# Every 403 of this domain is a limit of use that waiting lifts, whatever its reason's name.
USAGE_LIMITS = "usageLimits"
PUSH_NOT_SUPPORTED = "pushNotSupportedForRequestedResource"  # a calendar Google will not watch
CALENDAR_USAGE_LIMITS = "quotaExceeded"  # the user's Calendar usage limits, not a quota of calls
DAILY_LIMIT = "dailyLimitExceeded"  # the project's calls of the quota day
# Google says a user under the Calendar usage limits can change their calendar again "within
# several hours"; without a Retry-After, this is when to try again.
CALENDAR_USAGE_RETRY = 3600.0


class CallBudget(Protocol):
    """The deployment's quota budget, as a client sees it (`calsync.store.quota.Spender`)."""

    def before_call(self, method: str) -> None:
        """Take this call from the budget: return when it may go, or raise QuotaWait."""

    def rate_limited(self, method: str, reason: str | None, retry_after: float | None) -> None:
        """Google refused a call for its rate (403 usageLimits or 429)."""


class GoogleCalendar:
    """One user's Calendar API, over its own HTTP connection (httplib2 is not thread-safe).

    The API's resources are shared by the process (see `_resources`); each request is sent through
    this user's authorised connection.
    """

    def __init__(
        self,
        credentials: Credentials,
        api_endpoint: str,
        *,
        timeout: float = 30.0,
        budget: CallBudget | None = None,
        http: httplib2.Http | None = None,
    ) -> None:
        """`http`: a connection lent for the client's life (`Connections`), else one of its own."""
        self.credentials = credentials
        self.budget = budget
        self._http = google_auth_httplib2.AuthorizedHttp(credentials, http=http or httplib2.Http(timeout=timeout))
        self._api = _resources(api_endpoint)

    # Calendar list ---------------------------------------------------------------------------
    def list_calendars(self) -> list[dict[str, Any]]:
        """Every entry of the user's calendar list, all pages."""
        items: list[dict[str, Any]] = []
        page_token: str | None = None
        while True:
            page = self._call(
                "calendarList.list",
                # showHidden: a calendar the user hid in Google's UI is still on the list, not removed.
                self._api.calendar_list.list(maxResults=CALENDAR_LIST_PAGE_SIZE, pageToken=page_token, showHidden=True),
            )
            items.extend(page.get("items", []))
            page_token = page.get("nextPageToken")
            if not page_token:
                return items

    def get_calendar(self, calendar_id: str) -> dict[str, Any]:
        return cast("dict[str, Any]", self._call("calendars.get", self._api.calendars.get(calendarId=calendar_id)))

    # Events ----------------------------------------------------------------------------------
    def list_events_page(
        self,
        calendar_id: str,
        *,
        sync_token: str | None = None,
        page_token: str | None = None,
        max_results: int = EVENTS_PAGE_SIZE,
    ) -> dict[str, Any]:
        """One page of events.list; full sync without a token (deleted events included), else incremental."""
        return decode_page(
            self.events_page_body(calendar_id, sync_token=sync_token, page_token=page_token, max_results=max_results)
        )

    def events_page_body(
        self,
        calendar_id: str,
        *,
        sync_token: str | None = None,
        page_token: str | None = None,
        max_results: int = EVENTS_PAGE_SIZE,
    ) -> bytes:
        """`list_events_page` without the decoding, for a thread that only waits on the network.

        Decoding a 2,500-event page holds the GIL for tens of milliseconds: done on a fetching
        thread it stalls the thread writing the previous page; see `decode_page`.
        """
        kwargs: dict[str, Any] = {"calendarId": calendar_id, "maxResults": max_results, "showDeleted": True}
        if sync_token:
            kwargs["syncToken"] = sync_token
        if page_token:
            kwargs["pageToken"] = page_token
        request = self._api.events.list(**kwargs)
        request.postproc = _keep_bytes  # errors are raised before it runs; a success keeps its bytes
        try:
            return cast("bytes", self._call("events.list", request))
        except GoogleNotFound as err:
            # Google's reference: an expired syncToken is answered "410 GONE", and the client should
            # sync in full; a 410 with another reason than fullSyncRequired is the same answer.
            if sync_token and err.status == 410:
                raise SyncTokenExpired(str(err), status=410, reason=err.reason) from err
            raise

    # Writes (calsync.sync.writes; every call there goes through its `_google`, the quota's place) --
    def insert_event(
        self, calendar_id: str, body: dict[str, Any], *, send_updates: str | None = None
    ) -> dict[str, Any]:
        """events.insert; a body with an `id` that exists gives Duplicate (409)."""
        request = self._api.events.insert(calendarId=calendar_id, body=body, **_send_updates(send_updates))
        return cast("dict[str, Any]", self._call("events.insert", request))

    def get_event(self, calendar_id: str, event_id: str) -> dict[str, Any]:
        """events.get (also a deleted event, as Google keeps it, and an unmodified instance of a series)."""
        request = self._api.events.get(calendarId=calendar_id, eventId=event_id)
        return cast("dict[str, Any]", self._call("events.get", request))

    def patch_event(
        self,
        calendar_id: str,
        event_id: str,
        body: dict[str, Any],
        *,
        if_match: str | None = None,
        send_updates: str | None = None,
    ) -> dict[str, Any]:
        """events.patch; with `if_match`, a changed event gives PreconditionFailed (412)."""
        request = self._api.events.patch(
            calendarId=calendar_id, eventId=event_id, body=body, **_send_updates(send_updates)
        )
        _if_match(request, if_match)
        return cast("dict[str, Any]", self._call("events.patch", request))

    def delete_event(
        self, calendar_id: str, event_id: str, *, if_match: str | None = None, send_updates: str | None = None
    ) -> None:
        """events.delete; with `if_match`, a changed event gives PreconditionFailed (412)."""
        request = self._api.events.delete(calendarId=calendar_id, eventId=event_id, **_send_updates(send_updates))
        _if_match(request, if_match)
        self._call("events.delete", request)

    # Push channels ---------------------------------------------------------------------------
    def watch_events(
        self, calendar_id: str, *, channel_id: str, token: str, address: str, ttl: timedelta
    ) -> dict[str, Any]:
        body = _channel_body(channel_id, token, address, ttl)
        request = self._api.events.watch(calendarId=calendar_id, body=body)
        return cast("dict[str, Any]", self._call("events.watch", request))

    def watch_calendar_list(self, *, channel_id: str, token: str, address: str, ttl: timedelta) -> dict[str, Any]:
        body = _channel_body(channel_id, token, address, ttl)
        return cast("dict[str, Any]", self._call("calendarList.watch", self._api.calendar_list.watch(body=body)))

    def stop_channel(self, channel_id: str, resource_id: str) -> None:
        self._call("channels.stop", self._api.channels.stop(body={"id": channel_id, "resourceId": resource_id}))

    # The one place where Google's failures become calsync's errors ---------------------------
    def _call(self, method: str, request: Any) -> Any:
        if self.budget is not None:
            self.budget.before_call(method)  # may wait for the budget: the connection is checked after
        drop_closed(self._http.http)
        try:
            result = request.execute(http=self._http, num_retries=0)
        except HttpError as err:
            GOOGLE_CALLS.labels(method, str(err.resp.status)).inc()
            mapped = map_http_error(err)
            if isinstance(mapped, RateLimited) and self.budget is not None:
                self.budget.rate_limited(method, mapped.reason, mapped.retry_after)
            raise mapped from err
        except RefreshError as err:
            GOOGLE_CALLS.labels(method, "refresh_error").inc()
            if getattr(err, "retryable", False):
                raise BackendError(f"token refresh failed: {err}", reason="refreshFailed") from err
            raise AuthRevoked(f"the grant was refused: {err}", status=400, reason="invalid_grant") from err
        except (TimeoutError, TransportError, httplib2.HttpLib2Error, ssl.SSLError, OSError) as err:
            GOOGLE_CALLS.labels(method, "network_error").inc()
            raise BackendError(f"{method}: network error: {err}", reason="networkError") from err
        GOOGLE_CALLS.labels(method, "200").inc()
        return result


class Connections:
    """Kept-alive connections to Google, lent to one client (one thread) at a time.

    For short calls made one by one from many threads (writes through calsync): each would
    otherwise open a connection of its own, a TCP and TLS handshake with Google per call. An
    httplib2.Http keeps one open connection per host and is not thread-safe, hence the lending.
    """

    def __init__(self, *, timeout: float = 30.0, keep: int = 16) -> None:
        self.timeout = timeout
        self.keep = keep
        self._idle: list[httplib2.Http] = []
        self._lock = threading.Lock()

    @contextmanager
    def lend(self) -> Iterator[httplib2.Http]:
        with self._lock:
            http = self._idle.pop() if self._idle else None
        http = http or httplib2.Http(timeout=self.timeout)
        try:
            yield http
        finally:
            with self._lock:
                if len(self._idle) < self.keep:
                    self._idle.append(http)


def drop_closed(http: httplib2.Http) -> None:
    """Close the connections of `http` that the server closed while they sat idle; checked before each
    call, so a kept-alive connection lent to a write, or a sync's own after a wait for the budget, is
    never written to after Google let it go.

    Google closes a connection that has been idle for a while. Written to again, it met a broken pipe
    as the request's body went out (http.client sends the headers and the body apart), and httplib2
    retries only when the failure comes with the response: a creation failed as if Google were down.
    An idle connection has nothing to read, so one that is readable was closed (or sent what was
    never asked for): closed here, it is opened again by the request.
    """
    for conn in list(http.connections.values()):
        sock = conn.sock
        if sock is None:
            continue
        try:
            readable = wait_for_read(sock, timeout=0.0)  # poll(): any descriptor, where select() stops at 1024
        except OSError:  # closed under us
            readable = True
        if readable:
            conn.close()


def decode_page(body: bytes) -> dict[str, Any]:
    """An events.list body as JSON (orjson: ~60% of the json module's time on a 2 MB page).

    A body that is not a JSON object is a failure of Google's side, retried later like a 5xx.
    """
    try:
        page = orjson.loads(body)
    except orjson.JSONDecodeError:  # not strict JSON (NaN, a lone surrogate): the json module's reading
        try:
            page = json.loads(body)
        except ValueError as err:
            raise BackendError(f"events.list: undecodable body: {err}", reason="badResponse") from err
    if not isinstance(page, dict):
        raise BackendError("events.list: the body is not a JSON object", reason="badResponse")
    return page


def _keep_bytes(_response: Any, content: bytes) -> bytes:
    return content


def map_http_error(err: HttpError) -> GoogleApiError:
    """Google's JSON error envelope → the calsync exception that says what to do about it."""
    status = int(err.resp.status)
    domain, reason, message, location = _reason(err)
    retry_after = _retry_after(err)
    if status == 410 and reason == "fullSyncRequired":
        return SyncTokenExpired(message, status=status, reason=reason)
    if status == 400 and location == "syncToken":
        # A token Google no longer reads at all ("Invalid sync token value."): the way out is the
        # same full sync as for an expired one; kept as a 400, the calendar failed every sync for good.
        return SyncTokenExpired(message, status=status, reason=reason or "invalid")
    if status in (404, 410):
        return GoogleNotFound(message, status=status, reason=reason)
    if status == 401:
        return AuthRevoked(message, status=status, reason=reason or "authError")
    if status == 403 and reason == CALENDAR_USAGE_LIMITS:
        return CalendarUsageLimited(
            message, status=status, reason=reason, retry_after=retry_after or CALENDAR_USAGE_RETRY
        )
    if status == 429 or (status == 403 and (reason in RATE_LIMIT_REASONS or domain == USAGE_LIMITS)):
        if reason == DAILY_LIMIT and retry_after is None:  # the quota day's calls: room comes back at its end
            now = datetime.now(UTC)
            retry_after = (day_ends(now) - now).total_seconds()
        return RateLimited(message, status=status, reason=reason or "rateLimitExceeded", retry_after=retry_after)
    if status == 403:
        return Forbidden(message, status=status, reason=reason)
    if status == 409 and reason == "duplicate":
        return Duplicate(message, status=status, reason=reason)
    if status == 412:
        return PreconditionFailed(message, status=status, reason=reason or "conditionNotMet")
    if status >= 500:
        return BackendError(message, status=status, reason=reason or "backendError", retry_after=retry_after)
    return GoogleApiError(message, status=status, reason=reason)


def _reason(err: HttpError) -> tuple[str | None, str | None, str, str | None]:
    """(domain, reason, message, location) of Google's error envelope."""
    try:
        body = json.loads(err.content.decode("utf-8", "replace"))
        error = body.get("error", {})
        first = (error.get("errors") or [{}])[0]
        message = str(error.get("message") or err.reason)
        return first.get("domain"), first.get("reason"), message, first.get("location")
    except (ValueError, AttributeError):
        return None, None, str(err.reason or f"HTTP {err.resp.status}"), None


def _retry_after(err: HttpError) -> float | None:
    """Retry-After in seconds or as an HTTP date (RFC 9110 allows both)."""
    return parse_retry_after(err.resp.get("retry-after"), datetime.now(UTC))


def _send_updates(value: str | None) -> dict[str, str]:
    return {"sendUpdates": value} if value else {}


def _if_match(request: Any, etag: str | None) -> None:
    """Google checks the version itself: the header goes on the request as given."""
    if etag is not None:
        request.headers["if-match"] = etag


def _channel_body(channel_id: str, token: str, address: str, ttl: timedelta) -> dict[str, Any]:
    return {
        "id": channel_id,
        "type": "web_hook",
        "address": address,
        "token": token,
        "params": {"ttl": str(int(ttl.total_seconds()))},
    }


@dataclass(frozen=True)
class _Resources:
    events: Resource
    calendar_list: Resource
    calendars: Resource
    channels: Resource


@lru_cache(maxsize=8)
def _resources(api_endpoint: str) -> _Resources:
    """Calendar v3's resources, built once per process and endpoint.

    Building them generates every method and its docstring from the discovery document, a large
    share of what a short incremental sync costs if done per client. Resources only build requests;
    the http given to `execute` sends them, so sharing them across threads is safe.
    """
    service = build_from_document(
        _discovery_document(), http=httplib2.Http(), client_options={"api_endpoint": api_endpoint}
    )
    return _Resources(
        events=service.events(),
        calendar_list=service.calendarList(),
        calendars=service.calendars(),
        channels=service.channels(),
    )


@lru_cache(maxsize=1)
def _discovery_document() -> str:
    """The calendar v3 discovery document shipped inside google-api-python-client (no fetch)."""
    return (resources.files("googleapiclient") / "discovery_cache" / "documents" / "calendar.v3.json").read_text()
