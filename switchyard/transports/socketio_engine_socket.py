"""The Trio side of one Engine.IO session: :class:`EngineSocket`.

It wraps the sans-IO :class:`~switchyard.protocols.engineio.ServerSession` and has two
faces:

* the **handler API** (``receive``, ``send``, ``send_many``, ``close``,
  ``mark_established``) for the session handler (the Socket.IO server);
* the **driver API** (``feed``, ``abort``, ``tick``, ``begin_poll`` / ``take_for_poll``
  / ``end_poll``, ``probe`` / ``upgrade`` / ``cancel_upgrade``, ``attach_websocket`` /
  ``flush_websocket`` / ``wait_for_writes``, ``wake`` / ``wait_changed``) for
  :class:`~switchyard.transports.socketio_engine.EngineServer`, which moves the bytes.
  Every driver call that can end the session does what h11 does: the state changes,
  the returned close events are delivered (``closed`` is set, ``receive`` ends), and
  waiters are woken. Nothing outside this class touches the session's internals.

Memory bound for what goes out: at most ``max_pending_out`` packets are queued, plus
one batch being written. A sender waits while the queue is full; when it stays full
(the client reads nothing) for ``send_timeout`` seconds, or one WebSocket write takes
longer than that, the session is aborted and the sender gets :class:`SessionEnded`.

Inline dispatch: a handler that registers ``set_dispatcher(handle, flush)`` and reads
with ``receive_batch`` / ``batch_done`` lets the WebSocket reader run ``handle(batch)``
in the reader's own task when nothing is queued and no batch is being handled (no task
switch between a received frame and its answer). Either way batches are handled one
at a time, in the order the client sent them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterable

import trio

from switchyard.protocols import engineio as eio
from switchyard.protocols.engineio import Packet, ServerSession, SessionState, Transport
from switchyard.transports.http_server import Request
from switchyard.transports.websocket_server import FastLock, WebSocketClosed

__all__ = ["Dispatcher", "EngineSocket", "SessionEnded"]

#: ``send(messages, timeout)``: writes a batch; False if ``timeout`` passed first.
WebSocketSend = Callable[[list[str | bytes], float], Awaitable[bool]]
#: ``(handle, flush)``: ``handle(batch)`` handles messages in order, ``flush()`` writes answers.
Dispatcher = tuple[Callable[[list[str | bytes]], Awaitable[object]], Callable[[], Awaitable[None]]]


class SessionEnded(Exception):
    """The session is closed; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EngineSocket:
    """One Engine.IO session (see the module docstring).

    ``max_queued_messages`` bounds the inbound queue (overflow aborts the session),
    ``max_pending_out`` and ``send_timeout`` the outbound one.
    """

    def __init__(
        self,
        session: ServerSession,
        request: Request,
        *,
        max_queued_messages: int = 1024,
        max_pending_out: int = 1024,
        send_timeout: float = 10.0,
        opened_at: float = 0.0,
    ) -> None:
        self.session = session
        #: The HTTP request that opened the session (headers, client address).
        self.request = request
        self.max_queued_messages = max_queued_messages
        self.max_pending_out = max_pending_out
        self.send_timeout = send_timeout
        #: When the session was opened (trio clock).
        self.opened_at = opened_at
        #: Set by the handler once the client is past its own handshake (e.g. joined
        #: a Socket.IO namespace); sessions that are not are shed first under load.
        self.established = False
        self._inbound: deque[str | bytes] = deque()
        self._inbound_closed = False
        self._inbound_changed = trio.Event()
        #: Set by the handler (see "Inline dispatch" in the module docstring).
        self.dispatcher: Dispatcher | None = None
        self._busy = False  # a batch is being handled
        self._changed = trio.Event()
        self._waiters = 0
        # WebSocket mode: frames are written by whoever queues them (no extra task hop)
        self._ws_send: WebSocketSend | None = None
        self._write_lock = FastLock()
        self._writer_kick = trio.Event()
        self.closed = trio.Event()
        self.close_reason: str | None = None

    @property
    def sid(self) -> str:
        return self.session.sid

    @property
    def transport(self) -> str:
        return self.session.transport.value

    @property
    def state(self) -> SessionState:
        return self.session.state

    # -- handler API ------------------------------------------------------------------
    async def receive(self) -> str | bytes:
        """The next message from the client; raises :class:`SessionEnded` once closed."""
        while True:
            try:
                return self.receive_nowait()
            except trio.WouldBlock:
                await self._wait_inbound()

    def receive_nowait(self) -> str | bytes:
        """A message already received, or ``trio.WouldBlock``; :class:`SessionEnded` once closed."""
        if self._inbound:
            return self._inbound.popleft()
        if self._inbound_closed:
            raise SessionEnded(self.close_reason or "closed")
        raise trio.WouldBlock

    async def _wait_inbound(self) -> None:
        await self._inbound_changed.wait()
        self._inbound_changed = trio.Event()

    def _inbound_ready(self) -> None:
        self._inbound_changed.set()

    def set_dispatcher(
        self, handle: Callable[[list[str | bytes]], Awaitable[object]], flush: Callable[[], Awaitable[None]]
    ) -> None:
        """Let the WebSocket reader handle batches inline (see the module docstring)."""
        self.dispatcher = (handle, flush)

    async def receive_batch(self, limit: int) -> list[str | bytes]:
        """Up to ``limit`` queued messages once no other batch is being handled.

        The caller handles them and then calls :meth:`batch_done`; raises
        :class:`SessionEnded` once the session is closed and nothing is queued.
        """
        while True:
            if self._inbound and not self._busy:
                self._busy = True
                inbound = self._inbound
                return [inbound.popleft() for _ in range(min(limit, len(inbound)))]
            if self._inbound_closed and not self._inbound:
                raise SessionEnded(self.close_reason or "closed")
            await self._wait_inbound()

    def take_inline(self) -> bool:
        """Whether the caller may handle a batch now, in its own task (then it is busy)."""
        if self._busy or self._inbound or self.dispatcher is None or self.session.state is not SessionState.OPEN:
            return False
        self._busy = True
        return True

    def batch_done(self) -> None:
        """The batch from :meth:`receive_batch` or :meth:`take_inline` is handled."""
        self._busy = False
        if self._inbound or self._inbound_closed:
            self._inbound_ready()

    def __aiter__(self) -> EngineSocket:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.receive()
        except SessionEnded:
            raise StopAsyncIteration from None

    async def send(self, data: str | bytes) -> None:
        await self.send_many((data,))

    async def send_many(self, items: Iterable[str | bytes]) -> None:
        """Queue messages for the client, in order; waits while the queue is full.

        Raises :class:`SessionEnded` if the session is (or becomes) closed, also when
        the client read nothing for ``send_timeout`` seconds (the session is aborted).
        """
        session = self.session
        if session.pending >= self.max_pending_out and session.state is SessionState.OPEN:
            with trio.move_on_after(self.send_timeout):
                while session.pending >= self.max_pending_out and session.state is SessionState.OPEN:
                    await self.wait_changed()
            if session.state is SessionState.OPEN and session.pending >= self.max_pending_out:
                self.abort(f"client read nothing for {self.send_timeout:g} s ({self.max_pending_out} packets queued)")
        if session.state is not SessionState.OPEN:
            raise SessionEnded(self.close_reason or "closed")
        session.send_many(items)
        if self._ws_send is not None:
            await self.flush_websocket()
        else:
            self.wake()

    def close(self, reason: str = "server close") -> None:
        """Close the session: queued messages and a CLOSE packet still go out."""
        self.handle_events(self.session.close(reason))

    def mark_established(self) -> None:
        """The client got past the handler's own handshake (see :attr:`established`)."""
        self.established = True

    # -- driver API -------------------------------------------------------------------
    def handle_events(self, events: list[eio.SessionEvent]) -> None:
        """Deliver session events (messages to the handler, a close to everyone), then wake."""
        for event in events:
            if isinstance(event, eio.MessageReceived):
                if self._inbound_closed:
                    continue
                if len(self._inbound) >= self.max_queued_messages:
                    self.handle_events(
                        self.session.abort(f"client sent more than {self.max_queued_messages} unprocessed messages")
                    )
                    return
                self._inbound.append(event.data)
                self._inbound_ready()
            else:
                if self.close_reason is None:
                    self.close_reason = event.reason
                self._inbound_closed = True
                self._inbound_ready()
                self.closed.set()
        self.wake()

    def feed_inline(self, packets: list[Packet]) -> list[str | bytes]:
        """Like :meth:`feed`, but when :meth:`take_inline` allows, the messages are
        returned for the caller to handle now instead of being queued (the caller then
        owns the batch and calls :meth:`batch_done`); an empty list otherwise."""
        events = self.session.receive_messages(packets, now=trio.current_time())
        if not events:
            return []
        if isinstance(events[0], eio.MessageReceived) and self.take_inline():
            batch: list[str | bytes] = []
            rest: list[eio.SessionEvent] = []
            for event in events:
                if isinstance(event, eio.MessageReceived) and not rest:
                    batch.append(event.data)
                else:
                    rest.append(event)
            if rest:
                self.handle_events(rest)
            return batch
        self.handle_events(events)
        return []

    def feed(self, packets: list[Packet]) -> None:
        """Packets the client sent on the active transport."""
        self.handle_events(self.session.receive_messages(packets, now=trio.current_time()))

    def abort(self, reason: str) -> None:
        """End the session now (the transport is gone or the client misbehaved)."""
        self.handle_events(self.session.abort(reason))

    def tick(self, now: float) -> None:
        """Heartbeat: send a due ping or notice a missed pong."""
        self.handle_events(self.session.tick(now))

    def next_deadline(self) -> float:
        return self.session.next_deadline()

    def wake(self) -> None:
        """Something changed: wake waiting polls / senders, and the WebSocket writer."""
        if self._waiters:
            self._changed.set()
            self._changed = trio.Event()
        session = self.session
        if self._ws_send is not None and (session.pending or session.state is not SessionState.OPEN):
            self._writer_kick.set()

    async def wait_changed(self) -> None:
        """Until the next :meth:`wake`."""
        self._waiters += 1
        try:
            await self._changed.wait()
        finally:
            self._waiters -= 1

    # long-polling
    def begin_poll(self) -> bool:
        """A GET arrived; False if it closed the session (overlapping GETs).

        Raises :class:`~switchyard.protocols.engineio.EngineIOError` for a GET the
        session refuses without closing (it was upgraded).
        """
        self.handle_events(self.session.begin_poll())
        return self.session.state is not SessionState.CLOSED

    def poll_ready(self) -> bool:
        """Whether a pending GET should be answered now."""
        session = self.session
        return session.has_outgoing(Transport.POLLING) or session.state is not SessionState.OPEN

    def take_for_poll(self) -> list[Packet]:
        """What a GET answers now (possibly nothing); wakes senders waiting for room."""
        packets = self.session.take_outgoing(Transport.POLLING)
        self.wake()
        return packets

    def end_poll(self) -> None:
        self.session.end_poll()

    # upgrade
    def probe(self, packet: Packet) -> Packet:
        """The ``2probe`` on the new WebSocket; returns the answer and releases a pending poll."""
        answer = self.session.receive_probe(packet)
        self.wake()
        return answer

    def upgrade(self, packet: Packet) -> None:
        """The ``5`` UPGRADE packet: the WebSocket becomes the transport."""
        self.session.receive_upgrade(packet)
        self.wake()

    def cancel_upgrade(self) -> None:
        self.session.cancel_upgrade()
        self.wake()

    # WebSocket writes
    def attach_websocket(self, send: WebSocketSend) -> None:
        """From now on senders write frames themselves through ``send``."""
        self._ws_send = send

    def detach_websocket(self) -> None:
        self._ws_send = None

    async def flush_websocket(self) -> None:
        """Write everything queued to the WebSocket, as one batch (one syscall).

        A write that does not complete within ``send_timeout`` aborts the session.
        """
        send = self._ws_send
        if send is None or not self.session.has_outgoing(Transport.WEBSOCKET):
            return
        async with self._write_lock:
            packets = self.session.take_outgoing(Transport.WEBSOCKET)
            if not packets:
                return
            if self._waiters:
                self._changed.set()
                self._changed = trio.Event()
            try:
                # the timeout is applied below only if the write has to wait
                written = await send([eio.encode_packet(p) for p in packets], self.send_timeout)
            except (WebSocketClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                self.abort("transport close")
                raise SessionEnded(self.close_reason or "transport close") from None
            if not written:
                self.abort(f"client did not read a write within {self.send_timeout:g} s")
                raise SessionEnded(self.close_reason or "send timeout")
            if self.session.state is SessionState.CLOSED:
                self._writer_kick.set()  # the CLOSE packet went out: the writer closes the socket

    async def wait_for_writes(self) -> None:
        """Until there is something for the WebSocket writer to do."""
        await self._writer_kick.wait()
        self._writer_kick = trio.Event()
