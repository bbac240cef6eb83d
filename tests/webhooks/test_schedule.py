from __future__ import annotations

import random

import pytest

from calsync.webhooks.schedule import (
    MAX_ATTEMPTS,
    MAX_RETRY_AFTER,
    RETRY_DELAYS,
    retry_delay,
)


def test_schedule_is_svix_s_with_eight_attempts() -> None:
    assert RETRY_DELAYS == (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    assert MAX_ATTEMPTS == 8


@pytest.mark.parametrize("attempts", range(1, 8))
def test_each_delay_is_its_step_within_20_percent(attempts: int) -> None:
    rng = random.Random(attempts)
    delays = [_delay(attempts, rng) for _ in range(200)]
    step = RETRY_DELAYS[attempts - 1]
    assert all(step * 0.8 <= d <= step * 1.2 for d in delays)
    assert max(delays) - min(delays) > step * 0.2  # jitter really spreads


def _delay(attempts: int, rng: random.Random) -> float:
    """retry_delay after an attempt that still has a retry left."""
    seconds = retry_delay(attempts, rng=rng)
    assert seconds is not None
    return seconds


def test_no_retry_after_the_eighth_attempt() -> None:
    assert retry_delay(8) is None


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_overloaded_endpoints_wait_at_least_a_minute(status: int) -> None:
    assert retry_delay(1, status=status) == 60  # the 5 s step raised to the floor
    plain = retry_delay(1, status=500)
    assert plain is not None and plain < 60


def test_retry_after_is_honoured_and_clamped() -> None:
    assert retry_delay(1, status=429, retry_after=120) == 120
    assert retry_delay(1, status=503, retry_after=30) == 60
    assert retry_delay(1, status=429, retry_after=10 * 86400) == MAX_RETRY_AFTER
    step = retry_delay(4, status=429, retry_after=120, rng=random.Random(1))
    assert step is not None and step > 7200 * 0.79  # a longer scheduled step is kept
