"""What a process needs to do calsync's work, built once from Settings (no Flask required)."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from calsync.clock import Clock, SystemClock
from calsync.config import Settings
from calsync.store.crypto import TokenCipher, cipher_from_settings
from calsync.store.db import make_engine, make_sessionmaker, sqlite_file
from calsync.store.quota import Budget, Limits
from calsync.wakeup import HostPeers, Wakeup


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    cipher: TokenCipher
    clock: Clock = field(default_factory=SystemClock)
    wakeup: Wakeup = field(default_factory=Wakeup)
    budget: Budget = field(init=False)

    def __post_init__(self) -> None:
        self.budget = Budget(self.sessions, self.clock, limits(self.settings))

    @classmethod
    def create(
        cls, settings: Settings, *, clock: Clock | None = None, engine: Engine | None = None, threads: int | None = None
    ) -> Runtime:
        """`threads`: the request or sync threads of the process, each of which may hold a connection."""
        engine = engine or make_engine(settings.database_url, threads=threads)
        database = sqlite_file(engine)
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            cipher=cipher_from_settings(settings),
            clock=clock or SystemClock(),
            wakeup=Wakeup(HostPeers.beside(database) if database else None),
        )

    def close(self) -> None:
        self.engine.dispose()


def limits(settings: Settings) -> Limits:
    """The per-minute budget as the budget's window sees it (the day is planned in calsync.work.quota)."""
    scale = settings.quota_window / timedelta(minutes=1)
    return Limits(
        per_window=max(0, round(settings.quota_per_minute * scale)),
        per_user_per_window=max(0, round(settings.quota_per_user_per_minute * scale)),
        window=settings.quota_window.total_seconds(),
    )


def freeze_startup_objects() -> None:
    """Leave what start-up built out of the garbage collector's full passes, in a long-running process.

    Once calsync is imported and its app built, a process holds about 117,000 objects (modules,
    SQLAlchemy's metadata, Flask, the Calendar API's discovery document). A full collection walked
    them all, tens of milliseconds during which no thread of the process ran: a receiver answering in
    a few milliseconds had its tail set by that pause, and a worker paused so while holding SQLite's
    write lock held up the intake of every web process. Collected first, so that no garbage is kept
    for good.
    """
    gc.collect()
    gc.freeze()
