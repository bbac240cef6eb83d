"""Google's per-minute quotas, enforced like Google: per project and per user, over a sliding window.

Off unless configured (other tests make calls as fast as they like). A call that would make the
last `window` seconds hold more than the limit is refused with 403 `rateLimitExceeded` (the
project's) or `userRateLimitExceeded` (the user's), domain `usageLimits`; refused calls do not count.
The accepted calls' times are kept, so a test can check any window afterwards.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from .errors import ApiError


@dataclass
class QuotaConfig:
    """Limits per window (None: no limit) and the window's length in seconds (Google's is 60)."""

    per_project: int | None = None
    per_user: int | None = None
    window: float = 60.0


class Quota:
    """The sliding windows of one emulated Cloud project."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.config = QuotaConfig()
        self._project: deque[float] = deque()
        self._users: dict[str, deque[float]] = {}
        self.refused = 0

    def configure(self, per_project: int | None, per_user: int | None, window: float) -> None:
        for value in (per_project, per_user):
            if value is not None and value < 1:
                raise ValueError("a quota is a positive number of calls (or null for none)")
        if window <= 0:
            raise ValueError("the quota window must be positive")
        with self._lock:
            self.config = QuotaConfig(per_project, per_user, window)
            self._project.clear()
            self._users.clear()
            self.refused = 0

    def check(self, user: str, now: float) -> None:
        """Count one call at `now` (seconds), or refuse it as Google would."""
        cfg = self.config
        if cfg.per_project is None and cfg.per_user is None:
            return
        with self._lock:
            user_calls = self._users.setdefault(user, deque())
            for calls in (self._project, user_calls):
                while calls and calls[0] <= now - cfg.window:
                    calls.popleft()
            if cfg.per_project is not None and len(self._project) >= cfg.per_project:
                self.refused += 1
                raise ApiError(403, "rateLimitExceeded", domain="usageLimits")
            if cfg.per_user is not None and len(user_calls) >= cfg.per_user:
                self.refused += 1
                raise ApiError(403, "userRateLimitExceeded", domain="usageLimits")
            self._project.append(now)
            user_calls.append(now)

    def clear(self) -> None:
        self.configure(None, None, 60.0)
