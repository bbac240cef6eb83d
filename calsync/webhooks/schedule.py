"""When to try a delivery again: Svix's schedule with jitter, and patience for overloaded endpoints.

Jitter keeps one subscriber's burst of failures from coming back as one burst; 429 and 502–504 mean
"overloaded", so such an endpoint gets at least a minute and at least what Retry-After asks for.
"""

from __future__ import annotations

import random

RETRY_DELAYS: tuple[float, ...] = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
JITTER = 0.2
OVERLOADED = frozenset({429, 502, 503, 504})
OVERLOAD_FLOOR = 60.0
MAX_RETRY_AFTER = 6 * 3600.0


def retry_delay(
    attempts_made: int, *, status: int | None = None, retry_after: float | None = None, rng: random.Random | None = None
) -> float | None:
    """Seconds until the next try after `attempts_made` failed attempts; None when none is left."""
    if attempts_made < 1:
        raise ValueError("retry_delay is asked after at least one attempt")
    if attempts_made >= MAX_ATTEMPTS:
        return None
    delay = RETRY_DELAYS[attempts_made - 1] * (rng or random).uniform(1 - JITTER, 1 + JITTER)
    if status in OVERLOADED:
        delay = max(delay, OVERLOAD_FLOOR)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay
