"""Publishing ``ai_events`` on a Redis Pub/Sub channel, as the meeting system subscribes.

:class:`RedisEventPublisher` has the interface of the ZeroMQ
:class:`~switchyard.services.inference.events.EventPublisher`: :meth:`publish` never
blocks and never raises; one task (``nursery.start(pub.run)``) drains a bounded queue
(``capacity`` events) into ``PUBLISH <channel> {"type", "payload"}``. Events beyond the
queue are dropped and counted in ``stats["dropped"]``; while Redis is unreachable the
task reconnects with backoff and events queue up (then drop) meanwhile: a reply is
never delayed for an event. :class:`FanOut` publishes each event to several publishers
(``events = "both"``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import coredis
import trio

from switchyard.protocols.codec import json_codec
from switchyard.runtime.ratelog import RateLimitedLog
from switchyard.services.inference.protocol import TaskEvent, encode_event
from switchyard.services.inference.redis_queue import open_redis, redis_url

__all__ = ["EventSink", "FanOut", "RedisEventPublisher"]


class EventSink(Protocol):
    """What the service needs of an event publisher."""

    stats: dict[str, int]

    def publish(self, event: TaskEvent) -> None: ...


class RedisEventPublisher:
    """``ai_events`` on Redis channel ``channel`` at ``url`` ("" = ``$SWITCHYARD_REDIS_URL``)."""

    def __init__(
        self, url: str = "", *, channel: str = "ai_events", capacity: int = 10_000, logger: logging.Logger | None = None
    ) -> None:
        self.url = redis_url(url)
        self.channel = channel
        self.log = logger or logging.getLogger("switchyard.inference.events")
        self.errors = RateLimitedLog(self.log, what="redis event errors")
        self._send, self._recv = trio.open_memory_channel[bytes](capacity)
        self._last_drop_log = 0.0
        self.stats = {"published": 0, "dropped": 0}

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Report started at once (Redis may come later), then publish until cancelled."""
        task_status.started(self.url)
        backoff = 0.2
        pending: bytes | None = None
        while True:
            try:
                async with open_redis(self.url) as client:
                    while True:
                        if pending is None:
                            pending = await self._recv.receive()
                        await client.publish(self.channel, pending)
                        pending = None
                        self.stats["published"] += 1
                        backoff = 0.2
            except (coredis.exceptions.RedisError, OSError) as exc:
                self.errors("publishing ai_events on %s: %s; retrying in %.1fs", self.url, exc, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def publish(self, event: TaskEvent) -> None:
        """Queue ``event`` (encoded as the ZeroMQ path encodes it, without the topic frame)."""
        body = encode_event(event)[1]
        try:
            self._send.send_nowait(bytes(body))
        except trio.WouldBlock:
            self.stats["dropped"] += 1
            now = time.monotonic()
            if now - self._last_drop_log >= 1.0:
                self._last_drop_log = now
                self.log.warning("redis event queue full: %d events dropped so far", self.stats["dropped"])

    def publish_json(self, message: Any) -> None:
        """Queue an already shaped ``{"type", "payload"}`` message."""
        try:
            self._send.send_nowait(json_codec.encode(message))
        except trio.WouldBlock:
            self.stats["dropped"] += 1


class FanOut:
    """Each event to every publisher in ``sinks``; ``stats`` sums theirs."""

    def __init__(self, sinks: Sequence[EventSink]) -> None:
        self.sinks = list(sinks)

    @property
    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for sink in self.sinks:
            for key, value in sink.stats.items():
                total[key] = total.get(key, 0) + value
        return total

    def publish(self, event: TaskEvent) -> None:
        for sink in self.sinks:
            sink.publish(event)
