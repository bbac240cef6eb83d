"""Signals set the stop event, also where a KeyboardInterrupt would be dropped."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from calsync.stopping import stop_on_signals


class _SignalledWhileCollected:
    """Raises the signal inside `__del__`: Python drops an exception raised there ("Exception ignored")."""

    def __init__(self, sig: signal.Signals) -> None:
        self.sig = sig

    def __del__(self) -> None:
        os.kill(os.getpid(), self.sig)
        time.sleep(0.05)  # the handler runs here, inside the finalizer


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_that_lands_in_a_finalizer_still_stops(sig: signal.Signals) -> None:
    announced: list[signal.Signals] = []
    before = signal.getsignal(sig)
    with stop_on_signals(announced.append) as stop:
        victim = _SignalledWhileCollected(sig)
        del victim
        assert stop.is_set()
        os.kill(os.getpid(), sig)  # a second signal is not announced again
        time.sleep(0.05)
    assert announced == [sig]
    assert signal.getsignal(sig) is before


def test_ctrl_c_landing_in_a_finalizer_is_lost_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the module exists: the default handler's KeyboardInterrupt vanishes in a finalizer."""
    dropped: list[type[BaseException] | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda raised: dropped.append(raised.exc_type))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    victim = _SignalledWhileCollected(signal.SIGINT)
    del victim  # no KeyboardInterrupt reaches this frame: it went to the hook below
    assert dropped == [KeyboardInterrupt]
