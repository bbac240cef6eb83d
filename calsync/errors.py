"""The one exception tree of calsync.

CalsyncError
├── ConfigError                 a setting is missing or malformed (names every bad variable)
├── LeaseLost                   another worker took over this work; stop without writing
├── ChannelNotWanted            a channel's calendar was removed, or its row stopped, before Google granted it
├── QuotaWait                   the quota budget has no room for this work yet (carries `wait`)
├── NotFoundError               an unknown account, calendar, subscription … asked for by a user
├── CursorExpired               a feed cursor older than the oldest change kept (carries `oldest_seq`)
├── ConsentError                the OAuth consent could not be completed (denied, bad state, exchange)
├── ConnectSessionError         an app's connect session
│   ├── InvalidConnectSession   a request to create one names a bad field (carries `field`)
│   └── ConnectLinkUnusable     its link is unknown, expired or already used (carries `reason`)
├── WebhookError                outgoing webhooks
│   ├── InvalidSubscription     a subscription request names a bad field (carries `field`)
│   ├── UnsafeURLError          the URL is not allowed (scheme, private address)
│   └── VerificationFailed      the endpoint did not prove it belongs to the subscriber
├── WriteRefused                a write through calsync that is not sent to Google, or that Google refused
│   ├── InvalidWrite            a bad request (body, header, parameter; carries `field`)
│   ├── InsufficientScope       the account's grant does not allow writing (carries `reconnect`)
│   ├── IdempotencyKeyReused    an Idempotency-Key given again with another body
│   ├── WriteConflict           If-Match named a version Google no longer holds (carries `current`)
│   └── CalendarHeld            other work held the calendar's turn too long (carries `wait`)
└── GoogleApiError              anything Google answered with an error (mapped in calsync.google.calendar)
    ├── AuthRevoked             the grant is gone (invalid_grant, 401 after a refresh): re-consent needed
    ├── SyncTokenExpired        410 fullSyncRequired: a full resync is needed
    ├── GoogleNotFound          404 notFound / 410 deleted on a resource
    ├── Forbidden               403 that waiting will not fix (forbidden, insufficientPermissions)
    ├── Duplicate               409 duplicate: an insert with an id the calendar already holds
    ├── PreconditionFailed      412: the If-Match etag is no longer the event's
    └── TransientGoogleError    worth retrying later: carries retry_after (seconds) when known
        ├── RateLimited         403/429 rate limits of the project or the user, dailyLimitExceeded
        ├── CalendarUsageLimited  403 quotaExceeded: the user's calendar takes no changes for hours
        └── BackendError        5xx and network failures
"""

from __future__ import annotations


class CalsyncError(Exception):
    """Base of every error calsync raises on purpose."""


class ConfigError(CalsyncError):
    """A setting is missing or malformed."""


class ChannelNotWanted(CalsyncError):
    """A watch no longer wanted: its calendar left the list, its account left, or its pending row was
    stopped (by a job that took it for a crash's leftover) before Google granted it."""


class NotFoundError(CalsyncError):
    """Something a user named does not exist."""


class CursorExpired(CalsyncError):
    """The changes right after a cursor were deleted by retention: reading on would skip them."""

    def __init__(self, after: int, oldest_seq: int) -> None:
        super().__init__(
            f"cursor {after} has expired: changes up to seq {oldest_seq - 1} were deleted by "
            "retention (CALSYNC_CHANGES_RETENTION); start from scratch: page /api/events, then "
            "read the changes after the smallest as_of_seq of those pages"
        )
        self.after = after
        self.oldest_seq = oldest_seq


class ConsentError(CalsyncError):
    """The consent flow failed; the message is safe to show to the end user.

    `reason` names the failure for programs (`not_configured`, `exchange_refused`,
    `google_unreachable`, `no_primary_calendar`); `detail` is for the operator.
    """

    def __init__(self, message: str, *, reason: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.detail = detail


class ConnectSessionError(CalsyncError):
    """A connect session (a single-use consent link an app made for its user) cannot be made or used."""


class InvalidConnectSession(ConnectSessionError):
    """A request for a connect session with a bad field; `field` names it for the caller."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ConnectLinkUnusable(ConnectSessionError):
    """A connect link that cannot start a consent; `reason` is `unknown`, `expired` or `used`."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConnectionUnusable(ConnectSessionError):
    """A connection code that cannot be confirmed; `reason` is `unknown`, `used` or `expired`."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class RefMismatch(ConnectSessionError):
    """The app confirmed a connection for another ref than its session's: the connection is dropped."""


class WebhookError(CalsyncError):
    """Outgoing webhook problem."""


class InvalidSubscription(WebhookError):
    """A webhook subscription request with a bad field; `field` names it for the caller."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class UnsafeURLError(WebhookError):
    """A webhook URL that calsync refuses to call."""


class VerificationFailed(WebhookError):
    """The subscriber's endpoint did not echo the challenge."""


class GoogleApiError(CalsyncError):
    """Google answered with an error."""

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class AuthRevoked(GoogleApiError):
    """The user's grant no longer works; only a new consent helps."""


class SyncTokenExpired(GoogleApiError):
    """The stored sync token is no longer valid."""


class GoogleNotFound(GoogleApiError):
    """The calendar, event or channel does not exist (any more)."""


class Forbidden(GoogleApiError):
    """Access denied in a way waiting does not fix."""


class Duplicate(GoogleApiError):
    """An insert named an event id that exists (or existed) in the calendar."""


class PreconditionFailed(GoogleApiError):
    """The event changed since the etag given in If-Match."""


class TransientGoogleError(GoogleApiError):
    """A failure worth retrying after a pause."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, reason=reason)
        self.retry_after = retry_after


class RateLimited(TransientGoogleError):
    """Google asked us to slow down."""


class CalendarUsageLimited(TransientGoogleError):
    """Google's Calendar usage limits (403 `quotaExceeded`, "Calendar usage limits exceeded"): the
    user made too many events, invitations or calendars in a short time, and Google refuses their
    changes for some hours while reads go on. Not a rate of calls: slowing the project down does not
    lift it, and other users are not held back."""


class BackendError(TransientGoogleError):
    """Google (or the network to it) failed; try again later."""


class WriteRefused(CalsyncError):
    """A write through calsync that did not change Google; the message is safe to show to the app."""


class InvalidWrite(WriteRefused):
    """A write request with a bad field (`field` names it: a body key, a header, a parameter)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class InsufficientScope(WriteRefused):
    """The account's grant lacks a write scope; `reconnect` says how its user consents again."""

    def __init__(self, message: str, *, reconnect: str) -> None:
        super().__init__(message)
        self.reconnect = reconnect


class IdempotencyKeyReused(WriteRefused):
    """The Idempotency-Key was used before with another body: answering the first would be wrong."""


class WriteConflict(WriteRefused):
    """Google refused If-Match: the event changed since; `current` is its version now (None if gone)."""

    def __init__(self, message: str, *, current: dict[str, object] | None) -> None:
        super().__init__(message)
        self.current = current


class CalendarHeld(WriteRefused):
    """Other work (a write, a sync page, a claim of the quota budget's rows) held what the write must
    wait for longer than it may wait; nothing was sent to Google, and the app may retry in `wait` s."""

    def __init__(self, message: str, *, wait: float) -> None:
        super().__init__(message)
        self.wait = wait


class LeaseLost(CalsyncError):
    """Another worker owns this work now (our lease lapsed); stop without writing."""


class QuotaWait(CalsyncError):
    """The deployment's Google quota has no room for this kind of work for `wait` seconds: put it off."""

    def __init__(self, message: str, *, wait: float) -> None:
        super().__init__(message)
        self.wait = wait
