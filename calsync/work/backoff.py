"""Per-calendar retry delays: exponential backoff with full jitter, Retry-After honoured.

Full jitter spreads the retries of many calendars hit by one quota wall, so they do not all come
back in the same second and hit it again.
"""

from __future__ import annotations

import random

BASE_SECONDS = 2.0
CAP_SECONDS = 30 * 60.0
MAX_DOUBLINGS = 64  # far past any cap; 2.0 ** 1024 overflows


def backoff_delay(
    error_count: int,
    *,
    retry_after: float | None = None,
    base: float = BASE_SECONDS,
    cap: float = CAP_SECONDS,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after the `error_count`-th failure in a row (1 = the first).

    The exponent stops growing long before the cap does: past 1,024 failures in a row (eleven days of
    a steady 5xx) `2 ** n` is too large for a float, and the OverflowError left the calendar leased
    and retried every lease period instead of every half hour."""
    ceiling = min(cap, base * 2 ** min(max(0, error_count - 1), MAX_DOUBLINGS))
    delay = (rng or random).uniform(0, ceiling)
    if retry_after is not None and retry_after > delay:
        delay = min(retry_after, 24 * 3600.0)
    return delay
