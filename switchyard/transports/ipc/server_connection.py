"""The server side of one IPC connection: reading, dispatch, replies, streams.

:class:`ServerConnection` is created by
:class:`~switchyard.transports.ipc.server.SocketServer` for each accepted client;
the module docstring of :mod:`switchyard.transports.ipc.server` says what handlers
and clients may rely on. :func:`current_request` lives here because the request
context is set by the connection that runs the handler.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from switchyard.protocols.codec import CodecError
from switchyard.protocols.ipc import (
    ERR_BAD_MESSAGE,
    ERR_CANCELLED,
    ERR_HANDLER,
    ERR_SHUTTING_DOWN,
    ERR_UNKNOWN_METHOD,
    IpcProtocolError,
    Kind,
    Message,
    error_for,
)
from switchyard.protocols.ipc_framing import FrameTooLarge, encode_frame, encode_message
from switchyard.runtime.inline import Blocked, ReadingRole, first_step, resume
from switchyard.transports.ipc.connection import HANDED_OFF, FramedConnection, SendTimeout
from switchyard.transports.ipc.errors import ReplyError
from switchyard.transports.ipc.stats import MethodStats

if TYPE_CHECKING:
    from switchyard.transports.ipc.server import SocketServer

__all__ = ["RequestContext", "ServerConnection", "current_request"]

ERR_ACCOUNT_MISMATCH = "account_mismatch"
#: Reading tasks a connection keeps parked for hand-offs (more are simply ended).
MAX_STANDBY = 8
RESERVED_PREFIX = "ipc."

Handler = Callable[[Any], Any]


@attrs.frozen
class RequestContext:
    """What a running handler may ask about its request (see :func:`current_request`)."""

    conn_id: str
    id: str
    method: str
    server: SocketServer


# Holds the RequestContext fields as a tuple: building the object on every request
# would cost more than most handlers, and few handlers ask.
_current: contextvars.ContextVar[tuple[str, str, str, SocketServer]] = contextvars.ContextVar("switchyard_ipc_request")


def current_request() -> RequestContext:
    """The request the calling handler serves; ``LookupError`` outside a handler."""
    return RequestContext(*_current.get())


class _Job:
    """A reading task's cancel scope, and the request it finishes after a hand-off."""

    __slots__ = ("handed_off", "message", "scope")

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.message: Message | None = None
        self.handed_off = False


async def _close_quietly(iterable: Any) -> None:
    aclose = getattr(iterable, "aclose", None)
    if aclose is not None:
        await aclose()


class ServerConnection:
    """One client connection of a :class:`~switchyard.transports.ipc.server.SocketServer`.

    Owns the connection's reading role, its in-flight requests and streams, and
    everything it answers; the server owns the listener, the handler registry, the
    limits and the counters it reads from here.
    """

    def __init__(self, server: SocketServer, conn_id: str, framed: FramedConnection, peer: str) -> None:
        self.server = server
        self.id = conn_id
        self.framed = framed
        self.peer = peer
        self.connected_at = time.time()
        #: The reading role's hand-off; its slots are the ``max_in_flight`` slots.
        self.role = ReadingRole(server.max_in_flight, self._read)
        self.slots = self.role.slots
        #: Requests and streams that blocked (and so can be cancelled), by id.
        self.running: dict[str, trio.CancelScope] = {}
        self.credits: dict[str, trio.Semaphore] = {}
        self.bad_messages = 0
        self.nursery: trio.Nursery | None = None
        self.ended = trio.Event()
        self.end_reason = ""
        #: Tasks that finished a handler they had handed the reading role away for,
        #: parked until a hand-off needs a reader again (see :meth:`_hand_off`).
        self._standby: list[trio.lowlevel.Task] = []

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    async def run(self) -> None:
        """Serve this connection until it ends (EOF, drop, or the server stops)."""
        async with trio.open_nursery() as nursery:
            self.nursery = self.role.nursery = nursery
            if self.server.heartbeat_interval:
                nursery.start_soon(self._keepalive)
            nursery.start_soon(self._read)
            await self.ended.wait()
            nursery.cancel_scope.cancel()

    async def _read(self) -> None:
        """A reading task: hold the reading role until EOF or until a handler takes it over.

        A task that handed the role away finishes its handler and then waits, parked,
        to be the reader again (:meth:`_hand_off` wakes it), so a handler that blocks
        on every request (the actor bridge's ``ask``) costs a wake-up per request
        rather than a task spawned and ended. At most :data:`MAX_STANDBY` tasks wait;
        the connection's end cancels them.
        """
        while await self._read_until_handed_off():
            if len(self._standby) >= MAX_STANDBY:
                return
            task = trio.lowlevel.current_task()
            self._standby.append(task)

            def abort(_: Any, task: trio.lowlevel.Task = task) -> trio.lowlevel.Abort:
                self._standby.remove(task)
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)

    def _hand_off(self) -> bool:
        """Give the reading role to a parked reader, or a new one, if a slot is free;
        True if the caller no longer reads (it holds a slot: :meth:`ReadingRole.release`)."""
        if not self.role.try_acquire():
            return False
        if self._standby:
            trio.lowlevel.reschedule(self._standby.pop())
        else:
            assert self.nursery is not None
            self.nursery.start_soon(self._read)
        return True

    async def _read_until_handed_off(self) -> bool:
        """Read until the connection ends (False) or this task handed the role away and
        finished that handler (True).

        The task's cancel scope doubles as the scope of a handler that blocked in
        it (see :meth:`_dispatch`): a handler that already ran a step cannot be put
        inside a new scope, but its task's scope encloses it.
        """
        while True:
            job = _Job(trio.CancelScope())
            with job.scope:
                reason = await self.framed.read_loop(
                    functools.partial(self._on_message, job), functools.partial(self._on_bad)
                )
                if reason != HANDED_OFF:
                    self.end(reason)
            message = job.message
            if job.scope.cancelled_caught and message is not None:
                if message.kind is Kind.REQUEST:
                    why = (
                        (ERR_SHUTTING_DOWN, "server is shutting down")
                        if self.server._draining
                        else (ERR_CANCELLED, "cancelled by the client")
                    )
                    await self._send(message.reply_error(*why))
                if not job.handed_off:
                    continue  # the handler ran in the reading task: read on
            break
        if not self.running:
            self.server._idle.set()
        return job.handed_off

    async def _keepalive(self) -> None:
        reason = await self.framed.keepalive(self.server.heartbeat_interval, self.server.heartbeat_timeout)
        if reason != "closed":
            self.server.log.warning("dropping connection %s (%s): %s", self.id, self.peer, reason)
            self.server._counters["errors"] += 1
        self.framed.close()
        self.end(reason)

    async def _send(self, message: Message) -> bool:
        """Send one message; False if the connection is gone (it is then closed).

        A result the codec cannot carry (or too big a frame) is replaced by an
        ``error`` answer naming the problem.
        """
        try:
            try:
                await self.framed.send(message, self.server.send_timeout)
            except (CodecError, FrameTooLarge) as exc:
                self.server._counters["errors"] += 1
                self.server.log.error("answer to %r (connection %s) cannot be sent: %s", message.method, self.id, exc)
                await self.framed.send(
                    Message.error(message.id, message.method, ERR_HANDLER, f"result cannot be sent: {exc}"[:2000]),
                    self.server.send_timeout,
                )
        except SendTimeout:
            self._dropped_stuck()
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        self.server._counters["messages_sent"] += 1
        return True

    def _dropped_stuck(self) -> None:
        """This client did not take a write within ``send_timeout``; it has been closed.

        Several writers may time out together; the drop is counted and logged once.
        """
        if self.ended.is_set():
            return
        self.server._counters["errors"] += 1
        self.server._counters["stuck_dropped"] += 1
        reason = f"not reading: a write blocked for {self.server.send_timeout:g} s (send_timeout)"
        self.end(reason)
        self.server._stuck_log("dropped connection %s (%s): %s", self.id, self.peer, reason)

    async def _on_bad(self, exc: IpcProtocolError) -> None:
        self.server._counters["errors"] += 1
        self.bad_messages += 1
        level = logging.WARNING if self.bad_messages == 1 else logging.DEBUG
        self.server.log.log(level, "connection %s (%s) sent a bad message: %s", self.id, self.peer, exc)
        await self._send(error_for(exc))
        if self.bad_messages >= self.server.max_bad_messages:
            self.server.log.warning("closing connection %s: %d bad messages", self.id, self.bad_messages)
            self.framed.close()

    async def _on_message(self, job: _Job, message: Message) -> bool:
        """Serve one message; True if this task gave the reading role away."""
        self.server._counters["messages_received"] += 1
        kind = message.kind
        if kind is Kind.REQUEST:
            # The hot path, kept flat: an ordinary request to a registered handler.
            handler = self.server._handlers.get(message.method)
            if handler is not None and not self.server._draining and message.id not in self.running:
                return await self._dispatch(job, message, message.method, handler, reply=True)
            return await self._on_request(job, message)
        if kind is Kind.PUSH:
            return await self._on_push(job, message)
        if kind is Kind.HEARTBEAT:
            try:
                await self.framed.answer_heartbeat(message)
                if message.is_ping:
                    self.server._counters["messages_sent"] += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        else:  # a response or error from a client answers nothing we asked
            self.server.log.debug("connection %s sent an unsolicited %s (id %r)", self.id, kind.value, message.id)
        return False

    async def _on_request(self, job: _Job, message: Message) -> bool:
        method = message.method
        if method.startswith(RESERVED_PREFIX):
            return await self._on_reserved(message)
        if self.server._draining:
            await self._send(message.reply_error(ERR_SHUTTING_DOWN, "server is shutting down"))
            return False
        handler = self.server._handlers.get(method)
        if handler is None:
            await self._unknown(message, method)
            return False
        if message.id in self.running:
            await self._duplicate(message)
            return False
        return await self._dispatch(job, message, method, handler, reply=True)

    async def _on_reserved(self, message: Message) -> bool:
        method = message.method
        if method == "ipc.hello":
            await self._hello(message)
        elif method == "ipc.health":
            await self._send(message.reply(self.server.health()))
        elif method == "ipc.stats":
            await self._send(message.reply(self.server.get_stats()))
        elif method == "ipc.stream":
            await self._start_stream(message)
        else:
            await self._unknown(message, method)
        return False

    async def _unknown(self, message: Message, method: str) -> None:
        self.server._counters["errors"] += 1
        known = ", ".join(self.server.methods) or "(none)"
        await self._send(
            Message.error(message.id, method, ERR_UNKNOWN_METHOD, f"unknown method {method!r}; known: {known}"[:500]),
        )

    async def _duplicate(self, message: Message) -> None:
        self.server._counters["errors"] += 1
        await self._send(message.reply_error(ERR_BAD_MESSAGE, f"request id {message.id!r} is already in flight"))

    async def _dispatch(self, job: _Job, message: Message, method: str, handler: Handler, reply: bool) -> bool:
        """Run ``handler`` for a request (``reply``) or a client push; True if the role was handed off.

        The handler starts inline in the reading task. Most handlers finish without
        ever blocking, and then no task is spawned at all. If the handler's first
        step blocks, a fresh task takes over reading (when the connection has a free
        ``max_in_flight`` slot) and this task finishes the handler, cancellable
        through its own scope (``job``); with no slot free, this task finishes the
        handler before it reads on (backpressure) and the handler can only be
        cancelled by shutdown. The slot is held until the reply is written (or the
        write gave up after ``send_timeout``), so a client that does not read holds
        at most ``max_in_flight`` replies in memory.
        """
        started = time.perf_counter()
        elapsed = 0.0
        ok = False
        handed_off = False
        answer: Message | None = None  # an error answer; None with ``ok``: the result is
        result: Any = None
        context = (self.id, message.id, method, self.server)
        token = _current.set(context)
        try:
            try:
                result = first_step(handler(message.data))
                if isinstance(result, Blocked):
                    # From here on no cancel scope may be entered around the coroutine
                    # (it may hold scopes of its own): only the task's.
                    _current.reset(token)  # the new reader must not inherit this request
                    handed_off = self._hand_off()
                    token = _current.set(context)
                    result = await self._finish_blocking(job, message, result, handed_off)
                if getattr(type(result), "__aiter__", None) is not None:
                    await _close_quietly(result)
                    raise TypeError(f"method {method!r} streams: call it with client.stream()")
                ok = True
            except ReplyError as exc:
                answer = message.reply_error(exc.code, exc.detail)
            except Exception as exc:
                self.server._counters["errors"] += 1
                self.server.log.exception("handler for %r (connection %s, id %r) failed", method, self.id, message.id)
                answer = message.reply_error(ERR_HANDLER, f"{type(exc).__name__}: {exc}"[:2000])
            finally:
                _current.reset(token)
                elapsed = time.perf_counter() - started
            if reply:
                codec, limit = self.framed.codec, self.server.max_frame_size
                try:
                    if answer is None:  # the handler's result: no Message made on the hot path
                        frame = encode_message(Kind.RESPONSE, message.id, method, result, codec, limit)
                    else:
                        frame = encode_frame(answer, codec, limit)
                    await self.framed.send_frame(frame, self.server.send_timeout)
                    self.server._counters["messages_sent"] += 1
                except (CodecError, FrameTooLarge):
                    if answer is None:
                        answer = Message(Kind.RESPONSE, message.id, method, result)
                    await self._send(answer)  # replaces it with an error naming the problem
                except SendTimeout:
                    self._dropped_stuck()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        finally:
            if handed_off:
                self.role.release()
            # Counted once the reply is on its way: the client need not wait for it.
            stats = self.server._method_stats.get(method)
            if stats is None:
                stats = self.server._method_stats[method] = MethodStats()
            stats.record(elapsed, ok)
        return handed_off

    async def _finish_blocking(self, job: _Job, message: Message, blocked: Blocked, handed_off: bool) -> Any:
        """Drive a handler coroutine that blocked to its end, in this task, under ``job.scope``."""
        job.message = message
        job.handed_off = handed_off
        registered = bool(message.id) and message.id not in self.running
        if registered:
            self.running[message.id] = job.scope
        if not handed_off:
            self.framed.paused = True
        try:
            return await resume(blocked)
        finally:
            if registered:
                del self.running[message.id]
            if not handed_off:
                self.framed.paused = False

    # -- streams --------------------------------------------------------------
    async def _start_stream(self, message: Message) -> None:
        body = message.data
        if not isinstance(body, dict) or not isinstance(body.get("method"), str):
            self.server._counters["errors"] += 1
            await self._send(
                message.reply_error(
                    ERR_BAD_MESSAGE, "ipc.stream needs data {'method': <text>, 'data': <any>, 'window': <int>}"
                ),
            )
            return
        method = body["method"]
        window = body.get("window", 16)
        if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= 65536:
            self.server._counters["errors"] += 1
            await self._send(message.reply_error(ERR_BAD_MESSAGE, "ipc.stream 'window' must be an integer in 1..65536"))
            return
        if self.server._draining:
            await self._send(message.reply_error(ERR_SHUTTING_DOWN, "server is shutting down"))
            return
        handler = self.server._handlers.get(method)
        if handler is None:
            await self._unknown(message, method)
            return
        if message.id in self.running:
            await self._duplicate(message)
            return
        await self._take_slot()
        scope = self.running[message.id] = trio.CancelScope()
        self.credits[message.id] = trio.Semaphore(window)
        assert self.nursery is not None
        self.nursery.start_soon(self._run_stream, message, method, handler, body.get("data"), scope)

    async def _take_slot(self) -> None:
        """One of the connection's ``max_in_flight`` slots; while none is free, stop reading."""
        try:
            self.slots.acquire_nowait()
        except trio.WouldBlock:
            self.framed.paused = True
            try:
                await self.slots.acquire()
            finally:
                self.framed.paused = False

    async def _run_stream(
        self, message: Message, method: str, handler: Handler, data: Any, scope: trio.CancelScope
    ) -> None:
        _current.set((self.id, message.id, method, self.server))
        started = time.perf_counter()
        ok = False
        answer: Message
        try:
            with scope:
                await self._stream_items(message, method, handler, data)
                ok = True
            if scope.cancelled_caught:
                ok = False
                if self.server._draining:
                    answer = message.reply_error(ERR_SHUTTING_DOWN, "server is shutting down")
                else:
                    answer = message.reply_error(ERR_CANCELLED, "cancelled by the client")
            else:
                answer = Message(Kind.RESPONSE, message.id, method, None)
        except ReplyError as exc:
            answer = message.reply_error(exc.code, exc.detail)
        except Exception as exc:
            if self.framed.closed and isinstance(exc, (trio.ClosedResourceError, trio.BrokenResourceError)):
                return  # the client went away mid-stream; nobody to answer
            self.server._counters["errors"] += 1
            self.server.log.exception(
                "stream handler for %r (connection %s, id %r) failed", method, self.id, message.id
            )
            answer = message.reply_error(ERR_HANDLER, f"{type(exc).__name__}: {exc}"[:2000])
        finally:
            del self.running[message.id]
            self.credits.pop(message.id, None)
            self.slots.release()
            self.server._method_stats.setdefault(method, MethodStats()).record(time.perf_counter() - started, ok)
            if not self.running:
                self.server._idle.set()
        await self._send(answer)

    async def _stream_items(self, message: Message, method: str, handler: Handler, data: Any) -> None:
        items = handler(data)
        if inspect.isawaitable(items):
            items = await items
        if not isinstance(items, AsyncIterable):
            raise TypeError(f"method {method!r} does not stream (its handler returned {type(items).__name__})")
        credits = self.credits[message.id]
        iterator = aiter(items)
        try:
            async for item in iterator:
                await credits.acquire()
                frame = encode_frame(
                    Message(Kind.PUSH, message.id, method, item), self.framed.codec, self.server.max_frame_size
                )
                # A write cut short by a cancel (client's ipc.cancel, shutdown) would
                # break the framing for everyone on this connection; finish it first.
                with trio.CancelScope(shield=True), trio.move_on_after(self.server.send_timeout):
                    await self.framed.send_frame(frame)
                if self.framed.closed:
                    raise trio.ClosedResourceError(f"connection {self.id} closed")
                self.server._counters["messages_sent"] += 1
        finally:
            await _close_quietly(iterator)

    # -- client pushes ----------------------------------------------------------
    async def _on_push(self, job: _Job, message: Message) -> bool:
        method, data = message.method, message.data
        if method == "ipc.cancel":
            target = data.get("id") if isinstance(data, dict) else None
            scope = self.running.get(target) if isinstance(target, str) else None
            if scope is not None:
                scope.cancel()
            return False
        if method == "ipc.credit":
            target = data.get("id") if isinstance(data, dict) else None
            n = data.get("n") if isinstance(data, dict) else None
            credits = self.credits.get(target) if isinstance(target, str) else None
            if credits is not None and isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 65536:
                for _ in range(n):
                    credits.release()
            return False
        handler = self.server._handlers.get(method)
        if handler is None or self.server._draining:
            self.server._counters["errors"] += 1
            if handler is None:
                await self._send(message.reply_error(ERR_UNKNOWN_METHOD, f"unknown method {method!r} for a push"))
            else:
                await self._send(message.reply_error(ERR_SHUTTING_DOWN, "server is shutting down"))
            return False
        return await self._dispatch(job, message, method, handler, reply=False)

    async def _hello(self, message: Message) -> None:
        wanted = message.data.get("account_id") if isinstance(message.data, dict) else None
        if wanted and wanted != self.server.account_id:
            self.server._counters["errors"] += 1
            self.server.log.warning(
                "connection %s asked for account %r; this server is %r", self.id, wanted, self.server.account_id
            )
            await self._send(
                message.reply_error(
                    ERR_ACCOUNT_MISMATCH, f"this server serves account {self.server.account_id!r}, not {wanted!r}"
                ),
            )
            self.framed.close()
            return
        await self._send(
            message.reply(
                {
                    "server": "switchyard",
                    "account_id": self.server.account_id,
                    "conn_id": self.id,
                    "codec": self.framed.codec.name,
                    "heartbeat_interval": self.server.heartbeat_interval,
                    "heartbeat_timeout": self.server.heartbeat_timeout if self.server.heartbeat_interval else 0.0,
                    "max_frame_size": self.server.max_frame_size,
                }
            ),
        )
