"""The generic ZeroMQ servers every service reuses.

:class:`ReqRepServer` serves REQ clients from a ROUTER socket. A handler runs
inline in the task that reads the socket; only if it blocks does reading pass to a
new task (``switchyard.runtime.inline``), so many REQ clients are served at once and
one slow request holds up no other. Every request gets exactly one reply, even when
the handler raises, times out or the request is too large (a REQ client without a
reply is stuck until it reconnects): ``error_reply`` builds that reply in the peer's
format.

:class:`RouterStreamServer` serves DEALER clients from a ROUTER socket: a handler
may send any number of replies to the requesting identity, and with
``supersede=True`` a new request from an identity cancels that identity's running
handler at once, so the old stream sends nothing more. ``ROUTER_MANDATORY`` is on,
so a send to a vanished peer raises :class:`PeerGone` instead of vanishing. Requests
of one identity start their handlers in the order they were read.

A peer that does not read costs at most ``sndhwm`` queued replies; a reply that
finds that queue full waits up to ``send_timeout`` and is then dropped
(:class:`PeerStuck`), and no other peer's reply waits behind it.

Both are used the same way from an actor::

    server = ReqRepServer(EndpointConfig("tcp://127.0.0.1:10086"), handler, error_reply=...)
    await self.nursery.start(server.serve)     # returns once bound
    ...
    await server.drain()                       # in on_stop: stop receiving, finish in-flight
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import nullcontext
from typing import Any

import trio
import zmq

from switchyard.runtime.inline import Blocked, ReadingRole, first_step, resume
from switchyard.runtime.ratelog import RateLimitedLog
from switchyard.transports.zmq import Frame, ReceiveStopped, ZmqSocket, open_socket
from switchyard.transports.zmq_endpoint import (
    DEFAULT_HARD_MESSAGE_SIZE,
    LIMIT_KEYS_MOVED,
    EndpointConfig,
    EndpointLimits,
)

__all__ = [
    "DEFAULT_HARD_MESSAGE_SIZE",
    "LIMIT_KEYS_MOVED",
    "EndpointConfig",
    "EndpointLimits",
    "HandlerTimeout",
    "MalformedEnvelope",
    "MessageTooLarge",
    "PeerGone",
    "PeerStuck",
    "ReqRepServer",
    "RouterStreamServer",
    "current_identity",
]

_current_identity: contextvars.ContextVar[bytes] = contextvars.ContextVar("switchyard_zmq_identity")


def current_identity() -> bytes:
    """The ROUTER routing id of the peer whose request the calling handler is serving.

    The bridge sets it just before calling a handler, in the task that runs that
    handler to its end (the reading task, which hands reading to a new task if the
    handler blocks, or a task of the handler's own), so inside a handler and its
    ``error_reply`` it names that request's client for the handler's whole run;
    per-client state keys on it. Raises ``LookupError`` outside a handler.
    """
    return _current_identity.get()


class MessageTooLarge(ValueError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class MalformedEnvelope(ValueError):
    """A ROUTER message without the routing envelope the server expects."""


class HandlerTimeout(TimeoutError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"request not handled within {seconds:g} s")


class _ArrivalOrder:
    """Requests of one identity: how many were read, how many have started."""

    __slots__ = ("arrived", "started", "turn")

    def __init__(self) -> None:
        self.arrived = 0
        self.started = 0
        self.turn = trio.lowlevel.ParkingLot()


class PeerGone(ConnectionError):
    """The peer identity is no longer connected (ROUTER_MANDATORY said EHOSTUNREACH)."""


class PeerStuck(PeerGone):
    """The peer has not read its replies: its queue stayed full for ``send_timeout``.

    A :class:`PeerGone`, so a stream to it ends like a stream to a peer that left.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"peer read nothing for {seconds:g} s with its queue full; reply dropped")


ReqHandler = Callable[[Any], Awaitable[Frame | Sequence[Frame]]]
ErrorReply = Callable[[BaseException, Any], Frame | Sequence[Frame]]
Send = Callable[[Frame | Sequence[Frame]], Awaitable[None]]
StreamHandler = Callable[[bytes, Any, Send], Awaitable[None]]


def _as_frames(reply: Frame | Sequence[Frame]) -> list[Frame]:
    if isinstance(reply, bytes | bytearray | memoryview | zmq.Frame):
        return [reply]
    return list(reply)


#: Reply types that are never awaitable (checked before the slower ``inspect.isawaitable``).
_PLAIN = (bytes, bytearray, memoryview, list, tuple, zmq.Frame)


def _size(frames: Sequence[Any]) -> int:
    return sum(len(f.buffer) if isinstance(f, zmq.Frame) else len(f) for f in frames)


def _bytes(frame: Any) -> bytes:
    return frame.bytes if isinstance(frame, zmq.Frame) else bytes(frame)


class _RouterServer:
    """What both servers share: the socket, limits, the reading role, drain.

    One task at a time holds the *reading role*. It runs each request's handler
    inline (most handlers never wait, and then no task is spawned); when a handler
    blocks, the reading role passes to a fresh task and the current one finishes
    that handler (``switchyard.runtime.inline``). At most ``max_concurrent``
    handlers are blocked at once; past that the reader finishes the handler before
    it reads on, and further requests wait in the socket (backpressure).
    """

    def __init__(self, config: EndpointConfig | str, *, name: str, logger: logging.Logger | None) -> None:
        self.config = config if isinstance(config, EndpointConfig) else EndpointConfig(config)
        self.name = name
        self.log = logger or logging.getLogger(f"switchyard.transports.{name}")
        self.endpoint: str | None = None
        self._socket: ZmqSocket | None = None
        self._in_flight: trio.Nursery | None = None
        self._draining = False
        #: Receive frames as ``bytes`` (one copy, cheaper than a ``zmq.Frame`` per frame)
        #: unless handlers get the frames themselves (``multipart=True``: zero-copy).
        self._recv_copy = True
        self._finished = trio.Event()
        #: The reading role's hand-off and the adaptive policy (``runtime.inline``).
        self._role = ReadingRole(max(1, self.config.max_concurrent), self._read)
        self.stats = {"requests": 0, "errors": 0, "too_large": 0, "malformed": 0, "send_timeouts": 0}
        #: Every bad request and failed handler logs through this (no log storms).
        self._bad = RateLimitedLog(self.log, what="failed or malformed requests")

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report the resolved endpoint via ``task_status``, serve until drained."""
        options = self.config.socket_options(router_mandatory=True)
        try:
            async with open_socket(zmq.ROUTER, bind=self.config.endpoint, options=options) as sock:
                self._socket = sock
                self.endpoint = sock.endpoints[0]
                async with trio.open_nursery() as in_flight:
                    self._in_flight = self._role.nursery = in_flight
                    task_status.started(self.endpoint)
                    await self._read()
        finally:
            self._socket = None
            self._in_flight = self._role.nursery = None
            self._finished.set()

    async def drain(self) -> None:
        """Stop receiving; return once every in-flight request has been answered."""
        self._draining = self._role.closed = True
        if self._socket is not None:
            self._socket.stop_receiving()  # wakes the reader (no cancel scope per receive)
        await self._finished.wait()

    async def _read(self) -> None:
        """The reading role: receive and dispatch until draining or handed to another task."""
        sock = self._socket
        assert sock is not None
        copy = self._recv_copy
        role = self._role
        served = 0
        while not self._draining:
            # A message already queued costs no scheduler pass (the receive checkpoints
            # only when it waits), so a burst is served in one go, yielding every so
            # often so other tasks still run.
            try:
                frames = await sock.recv_multipart_burst(copy=copy)
            except ReceiveStopped:
                return
            # Handlers that mostly block (an ask, a batching model) get a task each
            # straight away, so a whole burst reaches them in one scheduler pass;
            # the others run inline.
            arrival = self._arrived(frames)
            if role.mostly_blocks and self._spawn(frames, arrival):
                pass
            elif await self._dispatch(frames, True, arrival):
                return  # handed off: another task reads now
            served += 1
            if served % 64 == 0:
                await trio.lowlevel.checkpoint()

    async def _run(
        self, awaitable: Any, scope: trio.CancelScope | None, reading: bool
    ) -> tuple[Any, Exception | None, bool]:
        """Finish an async handler's ``awaitable`` (under ``scope``, if given); if it blocks in the reading task, hand the reading role on.

        Returns ``(result, error, handed_off)``: the handler's exception comes back as
        ``error`` so the caller learns ``handed_off`` either way. ``scope`` must not
        have been entered yet; without one no cancel scope is entered at all (they
        cost more than a non-blocking handler). A plain (non-async) handler's result
        never comes here and needs no scope: code that never reaches a checkpoint
        cannot be cancelled.
        """
        handed_off = False
        try:
            with scope if scope is not None else nullcontext():
                result = first_step(awaitable)
                blocked = isinstance(result, Blocked)
                self._role.record(blocked)
                if blocked:
                    handed_off = reading and self._role.hand_off()
                    try:
                        result = await resume(result)
                    finally:
                        if handed_off:
                            self._role.release()
        except Exception as exc:
            return None, exc, handed_off
        return result, None, handed_off

    def _is_plain(self, result: Any) -> bool:
        """True (and counted as a handler that did not block) if ``result`` is a reply, not an awaitable."""
        if isinstance(result, _PLAIN) or not inspect.isawaitable(result):
            self._role.record(False)
            return True
        return False

    def _spawn(self, frames: list[Any], arrival: int) -> bool:
        """Serve ``frames`` in a task of its own if a slot is free; False if none is."""
        if not self._role.try_acquire():
            return False
        assert self._in_flight is not None
        self._in_flight.start_soon(self._serve_detached, frames, arrival)
        return True

    async def _serve_detached(self, frames: list[Any], arrival: int) -> None:
        try:
            await self._dispatch(frames, False, arrival)
        finally:
            self._role.release()

    def _arrived(self, frames: list[Any]) -> int:
        """Note a message as it is read; its arrival number goes to :meth:`_dispatch`."""
        return 0

    async def _dispatch(self, frames: list[Any], reading: bool, arrival: int) -> bool:
        """Serve one message; True if the reading role was handed to another task.

        ``reading``: called by the task holding the reading role (which may hand it on).
        ``arrival``: what :meth:`_arrived` returned when the message was read.
        """
        raise NotImplementedError

    async def _send(self, frames: list[Frame]) -> None:
        sock = self._socket
        if sock is None:
            raise trio.ClosedResourceError("server is not running")
        # Never wait on the socket itself: a ROUTER send waits only for *this* peer's
        # queue (SNDHWM messages), and holding the socket's send turn meanwhile would
        # stall every other client's replies behind one that does not read.
        delay = 0.0005
        deadline: float | None = None
        while not self._try_send(sock, frames):
            now = trio.current_time()
            if deadline is None:
                deadline = now + self.config.send_timeout
            elif now >= deadline:
                self.stats["send_timeouts"] += 1
                raise PeerStuck(self.config.send_timeout)
            await trio.sleep(min(delay, max(deadline - now, 0.0)))
            delay = min(delay * 2, 0.05)

    @staticmethod
    def _try_send(sock: ZmqSocket, frames: list[Frame]) -> bool:
        try:
            return sock.try_send_multipart(frames)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise PeerGone("peer is no longer connected") from None
            raise

    async def _send_after_handler(self, frames: list[Frame], reading: bool) -> bool:
        """Send a reply from :meth:`_dispatch`; True if the reading role was handed on.

        A reply that must wait for room (its peer is not reading) first hands the
        reading role to a new task, so other peers' requests are still read.
        """
        sock = self._socket
        if sock is not None and self._try_send(sock, frames):
            return False
        return await self._send_waiting(frames, reading)

    async def _send_waiting(self, frames: list[Frame], reading: bool) -> bool:
        """:meth:`_send_after_handler` once a first try found no room."""
        handed_off = reading and self._role.hand_off()
        try:
            await self._send(frames)
        finally:
            if handed_off:
                self._role.release()
        return handed_off

    def _check_size(self, body: Sequence[Any]) -> None:
        limit = self.config.max_message_size
        if limit > 0:
            first = body[0] if len(body) == 1 else None
            size = len(first) if type(first) is bytes else _size(body)
            if size > limit:
                self.stats["too_large"] += 1
                raise MessageTooLarge(size, limit)


class ReqRepServer(_RouterServer):
    """ROUTER serving REQ clients concurrently; every request gets exactly one reply.

    ``handler(body)`` gets the request body as ``bytes`` (or, with
    ``multipart=True``, the list of body frames as ``zmq.Frame``, zero-copy) and
    returns the reply: bytes-like, or a sequence of frames. ``error_reply(exc,
    body)`` turns any failure (handler exception, :class:`HandlerTimeout`,
    :class:`MessageTooLarge`, a multi-frame request on a single-frame server) into
    the reply the peer understands; it must not raise.
    """

    def __init__(
        self,
        config: EndpointConfig | str,
        handler: ReqHandler,
        *,
        error_reply: ErrorReply,
        multipart: bool = False,
        accept_dealer: bool = False,
        name: str = "reqrep",
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(config, name=name, logger=logger)
        self.handler = handler
        self.error_reply = error_reply
        self.multipart = multipart
        self._recv_copy = not multipart
        self.accept_dealer = accept_dealer

    async def _dispatch(self, frames: list[Any], reading: bool, arrival: int) -> bool:
        identity = frames[0]
        _current_identity.set(identity if type(identity) is bytes else _bytes(identity))
        # [identity, b"", body...] from a REQ peer; a proxied one has more identities
        if len(frames) > 2 and len(frames[1]) == 0 and len(identity) != 0:
            split: int | None = 1
        else:
            split = next((i for i, f in enumerate(frames) if len(f) == 0), None)
        if split is not None:
            cut = split + 1
        elif self.accept_dealer and len(frames) >= 2:
            cut = 1  # a DEALER peer in lockstep: [identity, body] in, [identity, reply] out
        else:
            self.stats["malformed"] += 1
            self._bad("dropped a message without a REQ envelope (%d frames)", len(frames))
            return False
        self.stats["requests"] += 1
        body_frames = frames[cut:]
        body: Any = body_frames
        handed_off = False
        try:
            self._check_size(body_frames)
            if not self.multipart:
                if len(body_frames) != 1:
                    raise MalformedEnvelope(f"expected a one-frame request, got {len(body_frames)} frames")
                body = body_frames[0]
                if type(body) is not bytes:
                    body = _bytes(body)
            # a plain handler runs here; an async one only makes its coroutine
            reply: Any = self.handler(body)
            if not self._is_plain(reply):
                timeout = self.config.request_timeout
                scope = trio.CancelScope(relative_deadline=timeout) if timeout > 0 else None
                reply, error, handed_off = await self._run(reply, scope, reading)
                if error is not None:
                    raise error
                if scope is not None and scope.cancelled_caught:
                    raise HandlerTimeout(timeout)
        except Exception as exc:
            self.stats["errors"] += 1
            self._bad("request failed: %s: %s", type(exc).__name__, exc, exc=exc)
            try:
                reply = self.error_reply(exc, body)
            except Exception as inner:  # the client must still get a reply
                self.log.error("error_reply raised %r; sending a plain-text error", inner)
                reply = f"error: {type(exc).__name__}: {exc}".encode()
        out = frames[:cut]
        if type(reply) is bytes:
            out.append(reply)
        else:
            out.extend(_as_frames(reply))
        sock = self._socket
        try:
            if sock is None or not self._try_send(sock, out):
                handed_off = await self._send_waiting(out, reading and not handed_off) or handed_off
        except PeerGone:
            self._bad("client left or stopped reading before its reply was sent")
        return handed_off


class RouterStreamServer(_RouterServer):
    """ROUTER serving DEALER clients; a handler may stream many replies to one identity.

    ``handler(identity, body, send)``: ``body`` is the request's bytes (or its list of
    frames with ``multipart=True``); ``await send(reply)`` sends one reply message to
    that identity (raises :class:`PeerGone` if it left). With ``supersede=True`` a new
    request from the same identity cancels the running handler first. A handler
    exception is logged and, if ``error_reply`` is given, answered with it.
    Requests from DEALERs that add an empty delimiter frame get it back on replies.
    """

    def __init__(
        self,
        config: EndpointConfig | str,
        handler: StreamHandler,
        *,
        supersede: bool = True,
        error_reply: ErrorReply | None = None,
        multipart: bool = False,
        name: str = "router-stream",
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(config, name=name, logger=logger)
        self.handler = handler
        self.supersede = supersede
        self.error_reply = error_reply
        self.multipart = multipart
        self._recv_copy = not multipart
        self._running: dict[bytes, trio.CancelScope] = {}
        #: Per identity with requests read but not yet started: start them in arrival order.
        self._order: dict[bytes, _ArrivalOrder] = {}

    def cancel(self, identity: bytes) -> bool:
        """Cancel the identity's running handler, if any; True if there was one."""
        scope = self._running.get(identity)
        if scope is None:
            return False
        scope.cancel()
        return True

    def _arrived(self, frames: list[Any]) -> int:
        identity = _bytes(frames[0])
        order = self._order.get(identity)
        if order is None:
            order = self._order[identity] = _ArrivalOrder()
        order.arrived += 1
        return order.arrived

    async def _take_turn(self, identity: bytes, arrival: int) -> None:
        """Wait until every earlier request of ``identity`` has started its handler.

        Tasks may start in any order (Trio does not promise FIFO scheduling), so
        without this a stale request could start after, and supersede, a newer one.
        """
        order = self._order[identity]
        while order.started != arrival - 1:
            await order.turn.park()
        order.started = arrival
        if order.started == order.arrived:
            del self._order[identity]  # nothing of this identity is waiting
        else:
            order.turn.unpark_all()

    async def _dispatch(self, frames: list[Any], reading: bool, arrival: int) -> bool:
        identity = _bytes(frames[0])
        await self._take_turn(identity, arrival)
        if len(frames) < 2:
            self.stats["malformed"] += 1
            self._bad("dropped a message with no body frame")
            return False
        _current_identity.set(identity)
        rest = frames[1:]
        prefix: list[Frame] = [identity]
        if len(rest) > 1 and len(rest[0]) == 0:
            prefix.append(b"")
            rest = rest[1:]
        self.stats["requests"] += 1
        if self.supersede:
            self.cancel(identity)
        timeout = self.config.request_timeout
        scope = trio.CancelScope(relative_deadline=timeout) if timeout > 0 else trio.CancelScope()
        if self.supersede:
            self._running[identity] = scope

        async def send(reply: Frame | Sequence[Frame]) -> None:
            await self._send([*prefix, *_as_frames(reply)])

        body: Any = rest
        handed_off = False
        try:
            self._check_size(rest)
            if not self.multipart:
                if len(rest) != 1:
                    raise MalformedEnvelope(f"expected a one-frame request, got {len(rest)} frames")
                body = _bytes(rest[0])
            result = self.handler(identity, body, send)
            if not self._is_plain(result):
                _, error, handed_off = await self._run(result, scope, reading)
                if error is not None:
                    raise error
            if scope.cancelled_caught and timeout > 0 and trio.current_time() >= scope.deadline:
                raise HandlerTimeout(timeout)
        except PeerGone:
            self._bad("client left or stopped reading mid-stream")
        except Exception as exc:
            self.stats["errors"] += 1
            self._bad("request failed: %s: %s", type(exc).__name__, exc, exc=exc)
            if self.error_reply is not None:
                try:
                    reply = [*prefix, *_as_frames(self.error_reply(exc, body))]
                    handed_off = await self._send_after_handler(reply, reading and not handed_off) or handed_off
                except Exception as inner:
                    self._bad("could not send the error reply: %r", inner)
        finally:
            if self._running.get(identity) is scope:
                del self._running[identity]
        return handed_off
