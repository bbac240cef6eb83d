"""Browser fixtures: Debian's Chromium driven by Playwright, calsync served live with a worker beside it."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from calsync.config import Secret, Settings
from calsync.runtime import Runtime

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "browser-test-password"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One browser per module; skipped without /usr/bin/chromium, except in CI where that is a failure."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: the CI image must install the chromium package")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 860}, color_scheme="light")
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    yield tab
    context.close()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared settings, with the dashboard switched on."""
    return dataclasses.replace(settings, admin_password=Secret(PASSWORD))


@pytest.fixture
def worker(runtime: Runtime) -> Iterator[Any]:
    """calsync's worker on the app's own runtime, as `calsync serve` runs it."""
    from calsync.work.worker import Worker

    stop = threading.Event()
    w = Worker(runtime, threads=2)
    thread = threading.Thread(target=w.run, args=(stop,), name="test-worker", daemon=True)
    thread.start()
    yield w
    stop.set()
    thread.join(timeout=15)
