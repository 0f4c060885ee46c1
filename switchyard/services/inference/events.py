"""Publishing ``ai_events`` on a ZeroMQ PUB socket without slowing replies down.

Serving code calls :meth:`EventPublisher.publish` (never blocks, never raises). When
nothing is queued and the socket takes the message at once, it is sent right there,
in the caller's task (a PUB send never waits: libzmq drops at a subscriber's HWM), so
a task's event costs no task switch; otherwise it is queued and one task owned by the
actor drains the queue into the PUB socket, in order. If events are produced
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
        self._send, self._recv = trio.open_memory_channel[Sequence[bytes]](capacity)
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
                    frames = await self._recv.receive()
                    while True:  # send the whole queued burst before yielding to the scheduler
                        if not sock.try_send_multipart(frames):
                            await sock.send_multipart(frames)
                        self.stats["published"] += 1
                        try:
                            frames = self._recv.receive_nowait()
                        except trio.WouldBlock:
                            break
            finally:
                self._sock = None

    def publish(self, event: TaskEvent) -> None:
        """Queue ``event`` under this publisher's topic."""
        self.publish_frames(encode_event(event, self.topic))

    def publish_frames(self, frames: Sequence[bytes]) -> None:
        """Send (or queue) an already encoded ``[topic, body]`` message (as scale-out workers send them)."""
        sock = self._sock
        # Straight out only when nothing queued would be overtaken.
        if sock is not None and not self._recv.statistics().current_buffer_used:
            try:
                if sock.try_send_multipart(frames):
                    self.stats["published"] += 1
                    return
            except (zmq.ZMQError, trio.ClosedResourceError):
                pass  # the queue's task sees (and reports) the same failure
        try:
            self._send.send_nowait(frames)
        except trio.WouldBlock:
            self.stats["dropped"] += 1
            now = time.monotonic()
            if now - self._last_drop_log >= 1.0:
                self._last_drop_log = now
                self.log.warning("event queue full: %d events dropped so far", self.stats["dropped"])
