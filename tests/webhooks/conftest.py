"""Webhook tests: a real subscriber on loopback, settings that allow it (plain http, private
address, short timeouts), and a frozen clock that starts at the real time so that signatures
stay inside standardwebhooks' ±5 minute tolerance until a test moves it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from calsync.config import Settings
from calsync.runtime import Runtime
from tests.webhooks.receiver import Receiver
from tests.webhooks.support import loopback_settings, make_runtime


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return loopback_settings(settings)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = make_runtime(settings)
    yield rt
    rt.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()
