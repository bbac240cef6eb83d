"""Google's JSON error envelope, so clients parse emulator errors exactly like Google's.

``ApiError`` is raised anywhere in a Calendar API handler and rendered once by the app.
"""

from __future__ import annotations

from typing import Any

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}

_DEFAULT_MESSAGES = {
    "rateLimitExceeded": "Rate Limit Exceeded",
    "userRateLimitExceeded": "User Rate Limit Exceeded",
    "quotaExceeded": "Calendar usage limits exceeded.",
    "dailyLimitExceeded": "Daily Limit Exceeded",
    "backendError": "Backend Error",
    "internalError": "Internal Error",
    "forbidden": "Forbidden",
    "notFound": "Not Found",
    "deleted": "Resource has been deleted",
    "authError": "Invalid Credentials",
    "insufficientPermissions": "Insufficient Permission",
    "badRequest": "Bad Request",
    "invalid": "Invalid Value",
    "required": "Login Required.",
    "duplicate": "The requested identifier already exists.",
    "conditionNotMet": "Precondition Failed",
    "requiredAccessLevel": "You need to have writer access to this calendar.",
    "fullSyncRequired": "Sync token is no longer valid, a full sync is required.",
}

_DOMAINS = {
    "rateLimitExceeded": "usageLimits",
    "userRateLimitExceeded": "usageLimits",
    "quotaExceeded": "usageLimits",
    "dailyLimitExceeded": "usageLimits",
    "fullSyncRequired": "calendar",
}


class ApiError(Exception):
    """A Calendar API error: HTTP status plus one entry of Google's ``errors`` list."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str | None = None,
        *,
        domain: str | None = None,
        location: str | None = None,
        location_type: str | None = None,
        headers: dict[str, str] | None = None,
        top_message: str | None = None,
    ) -> None:
        self.code = code
        self.reason = reason
        self.message = message or _DEFAULT_MESSAGES.get(reason, reason)
        self.domain = domain or _DOMAINS.get(reason, "global")
        self.location = location
        self.location_type = location_type or ("parameter" if location else None)
        self.headers = dict(headers or {})
        self.top_message = top_message or self.message
        super().__init__(f"{code} {reason}: {self.message}")

    def body(self) -> dict[str, Any]:
        """The JSON body Google sends for this error."""
        entry: dict[str, Any] = {"domain": self.domain, "reason": self.reason, "message": self.message}
        if self.location:
            entry["locationType"] = self.location_type
            entry["location"] = self.location
        error: dict[str, Any] = {"code": self.code, "message": self.top_message, "errors": [entry]}
        if self.code in _STATUS:
            error["status"] = _STATUS[self.code]
        return {"error": error}


def not_found() -> ApiError:
    """Google's 404 for an unknown calendar or event."""
    return ApiError(404, "notFound")


def invalid(message: str, location: str | None = None) -> ApiError:
    """A 400 for a bad parameter or body field."""
    return ApiError(400, "invalid", message, location=location)


def bad_request(message: str, location: str | None = None) -> ApiError:
    """A 400 ``badRequest`` (used for parameter combinations Google refuses)."""
    return ApiError(400, "badRequest", message, location=location)
