"""Publishing ``ai_events`` on a ZeroMQ PUB socket without slowing replies down.

Serving code calls :meth:`EventPublisher.publish` (never blocks, never raises). The
event is only queued: one task owned by the actor encodes and sends queued events,
in order, the whole queued burst per wake-up. That task runs once the caller's
current step is over, so a task's reply is on the wire before its event is even
encoded, and a lockstep client's next request never waits behind it (a PUB send
never waits either: libzmq drops at a subscriber's HWM). If events are produced
faster than they can be sent, the queue (``capacity`` events) fills and further
events are dropped, counted in ``stats["dropped"]`` and logged at most once per
second: a reply is never delayed for an event. Like any ZeroMQ PUB socket, a
subscriber that falls more than its high-water mark behind loses messages inside
libzmq, and a subscriber only sees events published after it connected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import trio
import zmq

from switchyard.services.inference.protocol import EVENT_TOPIC, TaskEvent, encode_event
from switchyard.transports.zmq import SocketOptions, ZmqSocket, open_socket

__all__ = ["EventPublisher"]


class EventPublisher:
    """A PUB socket on ``endpoint`` fed from a bounded queue. Start with ``nursery.start(pub.run)``."""

    def __init__(
        self,
        endpoint: str,
        *,
        topic: bytes = EVENT_TOPIC,
        capacity: int = 10_000,
        sndhwm: int = 10_000,
        logger: logging.Logger | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.topic = topic
        self.sndhwm = sndhwm
        self.log = logger or logging.getLogger("switchyard.inference.events")
        self._send, self._recv = trio.open_memory_channel[TaskEvent | Sequence[bytes]](capacity)
        self._last_drop_log = 0.0
        self._sock: ZmqSocket | None = None
        self.stats = {"published": 0, "dropped": 0}

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report the resolved endpoint, then publish until cancelled."""
        options = SocketOptions(sndhwm=self.sndhwm, linger_ms=0)
        async with open_socket(zmq.PUB, bind=self.endpoint, options=options) as sock:
            self._sock = sock
            try:
                task_status.started(sock.endpoints[0])
                while True:
                    queued = await self._recv.receive()
                    while True:  # send the whole queued burst before yielding to the scheduler
                        frames = encode_event(queued, self.topic) if isinstance(queued, TaskEvent) else queued
                        if not sock.try_send_multipart(frames):
                            await sock.send_multipart(frames)
                        self.stats["published"] += 1
                        try:
                            queued = self._recv.receive_nowait()
                        except trio.WouldBlock:
                            break
            finally:
                self._sock = None

    def publish(self, event: TaskEvent) -> None:
        """Queue ``event``; it is encoded and sent under this publisher's topic by its own task."""
        self._queue(event)

    def publish_frames(self, frames: Sequence[bytes]) -> None:
        """Queue an already encoded ``[topic, body]`` message (as scale-out workers send them)."""
        self._queue(frames)

    def _queue(self, item: TaskEvent | Sequence[bytes]) -> None:
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            self.stats["dropped"] += 1
            now = time.monotonic()
            if now - self._last_drop_log >= 1.0:
                self._last_drop_log = now
                self.log.warning("event queue full: %d events dropped so far", self.stats["dropped"])
