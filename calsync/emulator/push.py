"""Push channels and the delivery pool: Google's web_hook notifications, retries and faults.

Notifications are queued with a due time and sent by a few delivery threads, off the request
thread, so a ``sync`` message may reach the receiver before the watch call has returned.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import heapq
import itertools
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from .errors import ApiError, invalid

USER_AGENT = "APIs-Google (+https://developers.google.com/webmasters/APIs-Google.html)"
RETRY_STATUSES = frozenset({500, 502, 503, 504})
DEFAULT_CHANNEL_TTL = 604800
_CHANNEL_ID = re.compile(r"^[A-Za-z0-9\-_+/=]{1,64}$")


@dataclass
class Channel:
    """A live (or ended) notification channel on one watched resource."""

    id: str
    resource: str
    resource_id: str
    resource_uri: str
    address: str
    token: str | None
    expiration: dt.datetime
    user: str
    client_id: str | None
    stopped: bool = False
    last_number: int = 0

    def as_dict(self) -> dict[str, object]:
        """Snapshot for ``Emulator.channels()`` and the control API."""
        kind, _, target = self.resource.partition(":")
        out: dict[str, object] = {
            "id": self.id,
            "resource_id": self.resource_id,
            "kind": kind,
            "address": self.address,
            "token": self.token,
            "expiration": self.expiration,
            "user": self.user,
            "resource_uri": self.resource_uri,
        }
        out["calendar_id"] = target if kind == "events" else None
        return out


def new_channel(
    body: Mapping[str, Any],
    resource: str,
    uri: str,
    user: str,
    client_id: str | None,
    epoch: str,
    now: dt.datetime,
    max_ttl: float,
) -> Channel:
    """Validate a watch request body like Google and build the channel it asks for."""
    channel_id = body.get("id")
    if not channel_id:
        raise ApiError(400, "required", "Required", location="id")
    if not isinstance(channel_id, str) or not _CHANNEL_ID.match(channel_id):
        raise ApiError(
            400, "channelIdInvalid", "Channel id must match [A-Za-z0-9\\-_\\+/=]+ and be at most 64 characters"
        )
    if body.get("type") not in ("web_hook", "webhook"):
        raise invalid(f"Unknown channel type: {body.get('type')}", "type")
    address = body.get("address")
    if not isinstance(address, str) or not address.startswith(("http://", "https://")):
        raise ApiError(400, "push.webhookUrlNotHttps", f"WebHook callback must be HTTPS: {address}")
    token = body.get("token")
    if token is not None and (not isinstance(token, str) or len(token) > 256):
        raise invalid("Channel token must be a string of at most 256 characters.", "token")
    ttl: float = DEFAULT_CHANNEL_TTL
    try:
        if body.get("expiration") is not None:
            ttl = int(body["expiration"]) / 1000 - now.timestamp()
        elif (body.get("params") or {}).get("ttl") is not None:
            ttl = int(body["params"]["ttl"])
    except (TypeError, ValueError):
        raise ApiError(400, "pushInvalidTtl", "Invalid channel TTL") from None
    if ttl <= 0:
        raise ApiError(400, "pushInvalidTtl", "Invalid channel expiration: it is in the past")
    expiration = now + dt.timedelta(seconds=min(ttl, max_ttl))
    expiration = expiration.replace(microsecond=expiration.microsecond // 1000 * 1000)
    digest = hashlib.sha256(f"{epoch}:{resource}".encode()).digest()
    resource_id = "".join("0123456789abcdefghijklmnopqrstuvwxyz"[b % 36] for b in digest)[:27]
    return Channel(channel_id, resource, resource_id, uri, address, token, expiration, user, client_id)


@dataclass
class PushRecord:
    """One notification as finally delivered (or dropped by a fault)."""

    time: dt.datetime
    channel_id: str
    resource_state: str
    message_number: int
    address: str
    status: int | None
    attempts: int
    fault: str | None = None


@dataclass
class PushFaults:
    """Probabilities (drop, duplicate), extra seconds (delay) and shuffling applied to deliveries."""

    drop: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    reorder: bool = False


@dataclass(order=True)
class _Message:
    due: float
    order: int
    channel: Channel = field(compare=False)
    state: str = field(compare=False)
    number: int = field(compare=False)
    generation: int = field(compare=False, default=0)
    attempt: int = field(compare=False, default=1)


class PushHub:
    """Channel registry plus a heap-scheduled pool of delivery threads."""

    def __init__(
        self,
        clock: Callable[[], dt.datetime],
        seed: int | None = None,
        workers: int = 4,
        retry_base: float = 0.2,
        max_attempts: int = 4,
        timeout: float = 5.0,
    ) -> None:
        self.clock = clock
        self.retry_base = retry_base
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.faults = PushFaults()
        self._seed = seed
        self._rng = random.Random(seed)
        self._workers = workers
        self._cond = threading.Condition()
        self._heap: list[_Message] = []
        self._order = itertools.count()
        self._in_flight = 0
        self._generation = 0  # bumped by clear(): deliveries in flight from before are not recorded
        self._threads: list[threading.Thread] = []
        self._running = False
        self._local = threading.local()
        self.channels: dict[str, Channel] = {}
        self.records: list[PushRecord] = []

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the delivery threads (idempotent)."""
        with self._cond:
            if self._running:
                return
            self._running = True
            self._threads = [
                threading.Thread(target=self._work, name=f"emulator-push-{i}", daemon=True)
                for i in range(self._workers)
            ]
        for thread in self._threads:
            thread.start()

    def shutdown(self) -> None:
        """Stop the delivery threads; queued messages are discarded."""
        with self._cond:
            self._running = False
            self._heap.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 1)
        self._threads = []

    def clear(self) -> None:
        """Forget channels, queued messages, records and faults."""
        with self._cond:
            self._generation += 1
            self.channels.clear()
            self._heap.clear()
            self.records.clear()
            self.faults = PushFaults()
            self._rng = random.Random(self._seed)
            self._cond.notify_all()

    # --- channels ----------------------------------------------------------------------------
    def live(self) -> list[Channel]:
        """Channels neither stopped nor expired."""
        now = self.clock()
        with self._cond:
            return [c for c in self.channels.values() if not c.stopped and c.expiration > now]

    def open(self, channel: Channel) -> None:
        """Register a channel and queue its ``sync`` message (number 1) at once."""
        with self._cond:
            self.channels[channel.id] = channel
            channel.last_number = 1
            self._enqueue(channel, "sync", 1)

    def stop(self, channel_id: str) -> None:
        """End a channel: nothing more is delivered on it, even what is already queued."""
        with self._cond:
            channel = self.channels.get(channel_id)
            if channel is not None:
                channel.stopped = True

    def notify(self, resource: str, state: str = "exists") -> None:
        """Queue a message on every live channel watching ``resource``."""
        now = self.clock()
        with self._cond:
            for channel in self.channels.values():
                if channel.resource == resource and not channel.stopped and channel.expiration > now:
                    channel.last_number += self._rng.randint(2, 7)
                    self._enqueue(channel, state, channel.last_number)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """True once nothing is queued or in flight (delayed and retried messages included)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._heap or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    # --- delivery ----------------------------------------------------------------------------
    def _enqueue(self, channel: Channel, state: str, number: int) -> None:
        faults = self.faults
        if faults.drop and self._rng.random() < faults.drop:
            self.records.append(
                PushRecord(self.clock(), channel.id, state, number, channel.address, None, 0, fault="dropped")
            )
            return
        copies = 2 if faults.duplicate and self._rng.random() < faults.duplicate else 1
        for _ in range(copies):
            due = time.monotonic() + faults.delay
            if faults.reorder:
                due += self._rng.uniform(0.0, 0.3)
            heapq.heappush(self._heap, _Message(due, next(self._order), channel, state, number, self._generation))
        self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                message = self._next()
                if message is None:
                    return
                self._in_flight += 1
            try:
                self._deliver(message)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()

    def _next(self) -> _Message | None:
        """Wait (lock held) for the earliest due message; ``None`` once shut down."""
        while self._running:
            if self._heap:
                wait = self._heap[0].due - time.monotonic()
                if wait <= 0:
                    return heapq.heappop(self._heap)
                self._cond.wait(wait)
            else:
                self._cond.wait()
        return None

    def _deliver(self, message: _Message) -> None:
        channel = message.channel
        if channel.stopped or channel.expiration <= self.clock():
            return
        headers = {
            "X-Goog-Channel-ID": channel.id,
            "X-Goog-Message-Number": str(message.number),
            "X-Goog-Resource-ID": channel.resource_id,
            "X-Goog-Resource-State": message.state,
            "X-Goog-Resource-URI": channel.resource_uri,
            "X-Goog-Channel-Expiration": email.utils.format_datetime(
                channel.expiration.astimezone(dt.UTC), usegmt=True
            ),
            "User-Agent": USER_AGENT,
            "Content-Length": "0",
        }
        if channel.token is not None:
            headers["X-Goog-Channel-Token"] = channel.token
        status: int | None
        try:
            response = self._session().post(
                channel.address, data=b"", headers=headers, timeout=self.timeout, allow_redirects=False
            )
            status = response.status_code
            response.close()
        except requests.RequestException:
            status = None
        if (status is None or status in RETRY_STATUSES) and message.attempt < self.max_attempts:
            with self._cond:
                if self._running and message.generation == self._generation:
                    message.due = time.monotonic() + self.retry_base * 2 ** (message.attempt - 1)
                    message.attempt += 1
                    message.order = next(self._order)
                    heapq.heappush(self._heap, message)
                    self._cond.notify_all()
                    return
        with self._cond:
            if message.generation == self._generation:
                self.records.append(
                    PushRecord(
                        self.clock(),
                        channel.id,
                        message.state,
                        message.number,
                        channel.address,
                        status,
                        message.attempt,
                    )
                )

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False  # deliver straight to the receiver, never via a proxy
        return session
