"""Injected API faults: "the next N calls fail with this Google error" (rate limits, 5xx), "the next
N calls take this much longer" (a slow Google), and "the next N writes are made, then the answer is
late or lost" (the caller never learns that Google did it)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .errors import ApiError


@dataclass
class FailRule:
    """Fail the next ``remaining`` matching calls with this status and reason."""

    remaining: int
    status: int
    reason: str
    retry_after: int | None = None
    method: str | None = None
    calendar_id: str | None = None

    def matches(self, api_method: str, calendar_id: str | None) -> bool:
        return _applies(self.method, self.calendar_id, api_method, calendar_id)


@dataclass
class SlowRule:
    """Hold the next ``remaining`` matching calls for ``seconds`` before serving them."""

    remaining: int
    seconds: float
    method: str | None = None
    calendar_id: str | None = None

    def matches(self, api_method: str, calendar_id: str | None) -> bool:
        return _applies(self.method, self.calendar_id, api_method, calendar_id)


def _applies(method: str | None, rule_calendar: str | None, api_method: str, calendar_id: str | None) -> bool:
    """Whether a rule applies to a call (no method means any Calendar API call)."""
    if method is None:
        if not api_method.startswith("calendar."):
            return False
    elif method != api_method:
        return False
    return rule_calendar is None or rule_calendar == calendar_id


@dataclass
class AfterWriteRule:
    """Apply the next ``remaining`` matching writes, then hold the answer ``hold`` seconds and, with a
    ``status``, answer that error instead of the result: the write stays made."""

    remaining: int
    hold: float = 0.0
    status: int | None = 503
    reason: str = "backendError"
    method: str | None = None
    calendar_id: str | None = None

    def matches(self, api_method: str, calendar_id: str | None) -> bool:
        return _applies(self.method, self.calendar_id, api_method, calendar_id)


class Faults:
    """The queue of pending API failures, consumed first-come first-served."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rules: list[FailRule] = []
        self.slow_rules: list[SlowRule] = []
        self.after_write_rules: list[AfterWriteRule] = []

    def add(self, rule: FailRule) -> None:
        """Queue a rule after the ones already pending."""
        if rule.remaining < 1 or not 400 <= rule.status <= 599:
            raise ValueError("fail_next needs n >= 1 and an HTTP error status")
        with self._lock:
            self.rules.append(rule)

    def slow(self, rule: SlowRule) -> None:
        """Queue a delay after the ones already pending."""
        if rule.remaining < 1 or rule.seconds <= 0:
            raise ValueError("slow_next needs n >= 1 and seconds > 0")
        with self._lock:
            self.slow_rules.append(rule)

    def after_write(self, rule: AfterWriteRule) -> None:
        """Queue a made-but-unanswered write after the ones already pending."""
        if rule.remaining < 1 or rule.hold < 0 or (rule.status is not None and not 400 <= rule.status <= 599):
            raise ValueError("fail_after_write needs n >= 1, hold >= 0 and an HTTP error status (or none)")
        with self._lock:
            self.after_write_rules.append(rule)

    def clear(self) -> None:
        """Forget every pending failure and delay."""
        with self._lock:
            self.rules.clear()
            self.slow_rules.clear()
            self.after_write_rules.clear()

    def check_after_write(self, api_method: str, calendar_id: str | None) -> None:
        """After a write was applied: wait out and raise the first matching rule's lost answer."""
        with self._lock:
            rule = next((r for r in self.after_write_rules if r.matches(api_method, calendar_id)), None)
            if rule is None:
                return
            rule.remaining -= 1
            if rule.remaining <= 0:
                self.after_write_rules.remove(rule)
        if rule.hold > 0:
            time.sleep(rule.hold)
        if rule.status is not None:
            raise ApiError(rule.status, rule.reason)

    def check(self, api_method: str, calendar_id: str | None) -> None:
        """Wait out the first matching delay, then raise the Google error of the first matching rule,
        consuming one use of each."""
        with self._lock:
            slow = next((r for r in self.slow_rules if r.matches(api_method, calendar_id)), None)
            if slow is not None:
                slow.remaining -= 1
                if slow.remaining <= 0:
                    self.slow_rules.remove(slow)
        if slow is not None:
            time.sleep(slow.seconds)
        with self._lock:
            rule = next((r for r in self.rules if r.matches(api_method, calendar_id)), None)
            if rule is None:
                return
            rule.remaining -= 1
            if rule.remaining <= 0:
                self.rules.remove(rule)
        headers = {"Retry-After": str(rule.retry_after)} if rule.retry_after is not None else {}
        raise ApiError(rule.status, rule.reason, headers=headers)
