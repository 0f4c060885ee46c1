"""IPC socket server: named handlers over Unix-domain or TCP stream sockets.

Quick start (the seed's flow, on Trio)::

    server = SocketServer("/tmp/test.sock", account_id="test_account")

    @server.handler("echo")
    async def handle_echo(data):
        return {"echo": data}

    server.register_handler("add", lambda data: {"result": data["a"] + data["b"]})

    async with server:                      # bound and serving inside the block
        await server.push("notification", {"text": "hi"})     # to every client
        ...

or ``await nursery.start(server.serve)`` (returns the bound address) and
``await server.aclose()`` for a graceful stop. What a caller may rely on:

* A handler is ``fn(data) -> result``, sync or async; its result is the
  ``response``. An exception becomes an ``error`` reply (code ``handler_error``,
  text ``"<Type>: <message>"``) and is logged once; the server goes on. Raise
  :class:`~switchyard.transports.ipc.errors.ReplyError` to answer with an error
  code of your own. An unknown
  method gets an ``error`` naming it (code ``unknown_method``). A handler that
  returns an async iterable (e.g. an ``async def`` generator) serves
  ``client.stream(...)``: each item is a ``push`` with the request's id, paced by
  the client's credit window, then a final ``response``.
* At most ``max_in_flight`` requests per connection are in flight, each from its
  handler's first step until its reply is written; beyond that the server stops
  reading that connection (socket backpressure). A write that cannot finish within
  ``send_timeout`` drops the client, so memory per connection stays bounded
  (docs/ipc.md, "Memory bound").
  :func:`current_request` tells a handler which connection asked.
* A client ``push`` is a notification: its handler runs and nothing is answered.
* Bad bytes never take the server down: an undecodable body gets an ``error``
  reply in the connection's codec and the connection goes on (up to
  ``max_bad_messages``); an oversized frame header gets an ``error`` and the
  connection is closed. Other clients are not affected.
* With heartbeats on, an idle client is pinged every ``health_check_interval``
  seconds and dropped after ``heartbeat_timeout`` seconds without a byte.
* Reserved methods (prefix ``ipc.``): ``ipc.hello`` (handshake; checks
  ``account_id``), ``ipc.health``, ``ipc.stats``, ``ipc.stream`` and the client
  pushes ``ipc.cancel`` / ``ipc.credit``. See docs/ipc.md for the wire format.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import itertools
import logging
import time
import types
from collections.abc import AsyncIterable, Callable
from contextlib import AsyncExitStack
from typing import Any

import attrs
import trio

from switchyard.protocols.codec import Codec, CodecError
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
from switchyard.protocols.ipc_framing import DEFAULT_MAX_FRAME_SIZE, FrameTooLarge, encode_frame
from switchyard.runtime.inline import Blocked, ReadingRole, first_step, resume
from switchyard.runtime.ratelog import RateLimitedLog
from switchyard.transports.ipc.address import (
    IpcAddress,
    default_socket_dir,
    ensure_private_dir,
    open_listener,
    parse_address,
    socket_path_for,
)
from switchyard.transports.ipc.connection import HANDED_OFF, FramedConnection, SendTimeout
from switchyard.transports.ipc.errors import ReplyError

__all__ = ["RequestContext", "SocketServer", "current_request", "request"]

ERR_ACCOUNT_MISMATCH = "account_mismatch"
ERR_TOO_MANY_CONNECTIONS = "too_many_connections"
RESERVED_PREFIX = "ipc."

Handler = Callable[[Any], Any]


def request(method: str) -> Callable[[Handler], Handler]:
    """Mark a function or method as the handler of ``method`` (the seed's decorator).

    Marking alone registers nothing: pass the function to
    :meth:`SocketServer.register_handler`, or an object whose marked methods should
    all be served to :meth:`SocketServer.register_handlers_from_instance`.
    """

    def mark(fn: Handler) -> Handler:
        fn._ipc_method = method  # type: ignore[attr-defined]
        return fn

    return mark


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


@attrs.define
class _MethodStats:
    calls: int = 0
    errors: int = 0
    total_seconds: float = 0.0
    max_seconds: float = 0.0

    def record(self, seconds: float, ok: bool) -> None:
        self.calls += 1
        self.errors += not ok
        self.total_seconds += seconds
        self.max_seconds = max(self.max_seconds, seconds)

    def snapshot(self) -> dict[str, Any]:
        mean = self.total_seconds / self.calls if self.calls else 0.0
        return {
            "calls": self.calls,
            "errors": self.errors,
            "mean_ms": round(mean * 1000, 3),
            "max_ms": round(self.max_seconds * 1000, 3),
        }


class _Connection:
    """Server-side state of one client connection."""

    def __init__(
        self, conn_id: str, framed: FramedConnection, peer: str, max_in_flight: int, read: Callable[..., Any]
    ) -> None:
        self.id = conn_id
        self.framed = framed
        self.peer = peer
        self.connected_at = time.time()
        #: The reading role's hand-off; its slots are the ``max_in_flight`` slots.
        self.role = ReadingRole(max_in_flight, read, self)
        self.slots = self.role.slots
        #: Requests and streams that blocked (and so can be cancelled), by id.
        self.running: dict[str, trio.CancelScope] = {}
        self.credits: dict[str, trio.Semaphore] = {}
        self.bad_messages = 0
        self.nursery: trio.Nursery | None = None
        self.ended = trio.Event()
        self.end_reason = ""

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()


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


class SocketServer:
    """Serves named handlers to IPC socket clients. See the module docstring."""

    def __init__(
        self,
        socket_path: str | IpcAddress | None = None,
        account_id: str = "default",
        *,
        enable_health_check: bool = True,
        health_check_interval: float = 15.0,
        heartbeat_timeout: float | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_connections: int = 256,
        max_in_flight: int = 64,
        max_bad_messages: int = 100,
        send_timeout: float = 5.0,
        grace_period: float = 5.0,
        backlog: int = 128,
        logger: logging.Logger | None = None,
    ) -> None:
        """``socket_path``: a Unix socket path or ``tcp://host:port``; ``None`` means the
        account's own path, :func:`~switchyard.transports.ipc.address.socket_path_for`.

        ``heartbeat_timeout`` defaults to 4 x ``health_check_interval``. ``send_timeout``
        bounds how long any write (reply, error, push, stream item) may wait on one
        client's full socket before that client is dropped. ``grace_period``: how long :meth:`aclose` lets in-flight
        requests finish.
        """
        if socket_path is None:
            self._default_dir = True
            socket_path = socket_path_for(account_id)
        else:
            self._default_dir = False
        self.address = parse_address(socket_path)
        self.account_id = account_id
        self.heartbeat_interval = health_check_interval if enable_health_check else 0.0
        self.heartbeat_timeout = heartbeat_timeout if heartbeat_timeout is not None else 4 * health_check_interval
        if self.heartbeat_interval and self.heartbeat_timeout <= 0:
            raise ValueError("heartbeat_timeout must be > 0")
        self.max_frame_size = max_frame_size
        self.max_connections = max_connections
        self.max_in_flight = max_in_flight
        self.max_bad_messages = max_bad_messages
        self.send_timeout = send_timeout
        self.grace_period = grace_period
        self.backlog = backlog
        self.log = logger or logging.getLogger("switchyard.ipc.server")
        self._stuck_log = RateLimitedLog(self.log, what="stuck-client drops")
        self.bound_address: IpcAddress | None = None

        self._handlers: dict[str, Handler] = {}
        self._conns: dict[str, _Connection] = {}
        self._conn_ids = itertools.count(1)
        self._method_stats: dict[str, _MethodStats] = {}
        self._counters = {
            "connections_total": 0,
            "messages_received": 0,
            "messages_sent": 0,
            "errors": 0,
            "stuck_dropped": 0,
        }
        self._started_at: float | None = None
        self._draining = False
        self._serve_scope: trio.CancelScope | None = None
        self._accept_scope: trio.CancelScope | None = None
        self._idle = trio.Event()
        self._stopped = trio.Event()
        self._exit_stack: AsyncExitStack | None = None

    # -- handlers -------------------------------------------------------------
    def register_handler(self, method: str, handler: Handler) -> None:
        """Serve ``method`` with ``handler`` (replacing any earlier one)."""
        if not isinstance(method, str) or not method:
            raise ValueError("method name must be non-empty text")
        if method.startswith(RESERVED_PREFIX):
            raise ValueError(f"method names starting with {RESERVED_PREFIX!r} are reserved")
        if not callable(handler):
            raise TypeError(f"handler for {method!r} is not callable")
        self._handlers[method] = handler

    def handler(self, method: str) -> Callable[[Handler], Handler]:
        """Decorator: ``@server.handler("echo")`` registers the function it decorates."""

        def register(fn: Handler) -> Handler:
            self.register_handler(method, fn)
            return fn

        return register

    def register_handlers_from_instance(self, instance: object) -> int:
        """Register every method of ``instance`` marked with :func:`request`; returns how many."""
        count = 0
        for name in dir(instance):
            attr = getattr(instance, name, None)
            method = getattr(attr, "_ipc_method", None)
            if isinstance(method, str) and callable(attr):
                self.register_handler(method, attr)
                count += 1
        return count

    @property
    def methods(self) -> list[str]:
        return sorted(self._handlers)

    # -- lifecycle ------------------------------------------------------------
    async def serve(self, *, task_status: trio.TaskStatus[IpcAddress] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report the bound address to ``nursery.start``, serve until cancelled or closed."""
        if self._started_at is not None:
            raise RuntimeError("a SocketServer serves once; make a new one to serve again")
        self._started_at = time.time()
        try:
            if self.address.is_unix and self._default_dir:
                ensure_private_dir(default_socket_dir())
            with trio.CancelScope() as self._serve_scope:
                async with open_listener(self.address, self.backlog) as (listener, bound):
                    self.bound_address = bound
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._accept_loop, listener, nursery)
                        self.log.info("IPC server for account %r listening on %s", self.account_id, bound)
                        task_status.started(bound)
        finally:
            self._stopped.set()

    start = serve  # the seed's name: ``await server.start()`` serves until cancelled

    async def __aenter__(self) -> SocketServer:
        stack = AsyncExitStack()
        nursery = await stack.enter_async_context(trio.open_nursery())
        try:
            await nursery.start(self.serve)
        except BaseException:
            await stack.aclose()
            raise
        self._exit_stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        stack, self._exit_stack = self._exit_stack, None
        try:
            with trio.CancelScope(shield=True):
                await self.aclose()
        finally:
            if stack is not None:
                await stack.__aexit__(exc_type, exc, tb)

    async def aclose(self, grace_period: float | None = None) -> None:
        """Graceful stop: refuse new connections and requests, let in-flight requests
        finish for up to ``grace_period`` (default: the constructor's), answer the rest
        with ``shutting_down`` errors, close every connection and the socket."""
        if self._serve_scope is None or self._stopped.is_set():
            return
        grace = self.grace_period if grace_period is None else grace_period
        self._draining = True
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        with trio.move_on_after(grace):
            while any(conn.running for conn in self._conns.values()):
                self._idle = trio.Event()
                await self._idle.wait()
        for conn in list(self._conns.values()):
            for scope in conn.running.values():
                scope.cancel()
        # Let the cancelled handlers send their shutting_down answers.
        with trio.move_on_after(min(1.0, self.send_timeout)):
            while any(conn.running for conn in self._conns.values()):
                self._idle = trio.Event()
                await self._idle.wait()
        self._serve_scope.cancel()
        await self._stopped.wait()

    stop = aclose  # the seed's name

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        with trio.CancelScope() as self._accept_scope:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:  # EMFILE and friends: wait, do not spin
                    self.log.warning("accept failed: %s", exc)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(self._serve_connection, stream)

    # -- one connection -------------------------------------------------------
    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn_id = f"c{next(self._conn_ids)}"
        try:
            peer = str(stream.socket.getpeername()) or "unix"
        except OSError:
            peer = "?"
        framed = FramedConnection(stream, codec=None, max_frame_size=self.max_frame_size, label=conn_id)
        if len(self._conns) >= self.max_connections or self._draining:
            code, text = (
                (ERR_SHUTTING_DOWN, "server is shutting down")
                if self._draining
                else (ERR_TOO_MANY_CONNECTIONS, f"server has {self.max_connections} connections already")
            )
            self.log.warning("refusing connection from %s: %s", peer, text)
            with trio.move_on_after(1.0):
                try:
                    await framed.send(Message.error("", "", code, text))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            framed.close()
            return
        conn = _Connection(conn_id, framed, peer, self.max_in_flight, self._read)
        self._conns[conn_id] = conn
        self._counters["connections_total"] += 1
        self.log.debug("connection %s from %s", conn_id, peer)
        try:
            async with trio.open_nursery() as nursery:
                conn.nursery = conn.role.nursery = nursery
                if self.heartbeat_interval:
                    nursery.start_soon(self._keepalive, conn)
                nursery.start_soon(self._read, conn)
                await conn.ended.wait()
                nursery.cancel_scope.cancel()
        finally:
            del self._conns[conn_id]
            framed.close()
            self._idle.set()
            self.log.info("connection %s from %s ended: %s", conn_id, peer, conn.end_reason or "server stopped")

    async def _read(self, conn: _Connection) -> None:
        """Hold this connection's reading role until EOF or until a handler takes it over.

        The task's cancel scope doubles as the scope of a handler that blocked in
        it (see :meth:`_dispatch`): a handler that already ran a step cannot be put
        inside a new scope, but its task's scope encloses it.
        """
        while True:
            job = _Job(trio.CancelScope())
            with job.scope:
                reason = await conn.framed.read_loop(
                    functools.partial(self._on_message, conn, job), functools.partial(self._on_bad, conn)
                )
                if reason != HANDED_OFF:
                    conn.end(reason)
            message = job.message
            if job.scope.cancelled_caught and message is not None:
                if message.kind is Kind.REQUEST:
                    why = (
                        (ERR_SHUTTING_DOWN, "server is shutting down")
                        if self._draining
                        else (ERR_CANCELLED, "cancelled by the client")
                    )
                    await self._send(conn, message.reply_error(*why))
                if not job.handed_off:
                    continue  # the handler ran in the reading task: read on
            break
        if not conn.running:
            self._idle.set()

    async def _keepalive(self, conn: _Connection) -> None:
        reason = await conn.framed.keepalive(self.heartbeat_interval, self.heartbeat_timeout)
        if reason != "closed":
            self.log.warning("dropping connection %s (%s): %s", conn.id, conn.peer, reason)
            self._counters["errors"] += 1
        conn.framed.close()
        conn.end(reason)

    async def _send(self, conn: _Connection, message: Message) -> bool:
        """Send one message; False if the connection is gone (it is then closed).

        A result the codec cannot carry (or too big a frame) is replaced by an
        ``error`` answer naming the problem.
        """
        try:
            try:
                await conn.framed.send(message, self.send_timeout)
            except (CodecError, FrameTooLarge) as exc:
                self._counters["errors"] += 1
                self.log.error("answer to %r (connection %s) cannot be sent: %s", message.method, conn.id, exc)
                await conn.framed.send(
                    Message.error(message.id, message.method, ERR_HANDLER, f"result cannot be sent: {exc}"[:2000]),
                    self.send_timeout,
                )
        except SendTimeout:
            self._dropped_stuck(conn)
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        self._counters["messages_sent"] += 1
        return True

    def _dropped_stuck(self, conn: _Connection) -> None:
        """``conn`` did not take a write within ``send_timeout``; it has been closed."""
        self._counters["errors"] += 1
        self._counters["stuck_dropped"] += 1
        reason = f"not reading: a write blocked for {self.send_timeout:g} s (send_timeout)"
        conn.end(reason)
        self._stuck_log("dropped connection %s (%s): %s", conn.id, conn.peer, reason)

    async def _on_bad(self, conn: _Connection, exc: IpcProtocolError) -> None:
        self._counters["errors"] += 1
        conn.bad_messages += 1
        level = logging.WARNING if conn.bad_messages == 1 else logging.DEBUG
        self.log.log(level, "connection %s (%s) sent a bad message: %s", conn.id, conn.peer, exc)
        await self._send(conn, error_for(exc))
        if conn.bad_messages >= self.max_bad_messages:
            self.log.warning("closing connection %s: %d bad messages", conn.id, conn.bad_messages)
            conn.framed.close()

    async def _on_message(self, conn: _Connection, job: _Job, message: Message) -> bool:
        """Serve one message; True if this task gave the reading role away."""
        self._counters["messages_received"] += 1
        kind = message.kind
        if kind is Kind.REQUEST:
            # The hot path, kept flat: an ordinary request to a registered handler.
            handler = self._handlers.get(message.method)
            if handler is not None and not self._draining and message.id not in conn.running:
                return await self._dispatch(conn, job, message, message.method, handler, reply=True)
            return await self._on_request(conn, job, message)
        if kind is Kind.PUSH:
            return await self._on_push(conn, job, message)
        if kind is Kind.HEARTBEAT:
            try:
                await conn.framed.answer_heartbeat(message)
                if message.is_ping:
                    self._counters["messages_sent"] += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        else:  # a response or error from a client answers nothing we asked
            self.log.debug("connection %s sent an unsolicited %s (id %r)", conn.id, kind.value, message.id)
        return False

    async def _on_request(self, conn: _Connection, job: _Job, message: Message) -> bool:
        method = message.method
        if method.startswith(RESERVED_PREFIX):
            return await self._on_reserved(conn, message)
        if self._draining:
            await self._send(conn, message.reply_error(ERR_SHUTTING_DOWN, "server is shutting down"))
            return False
        handler = self._handlers.get(method)
        if handler is None:
            await self._unknown(conn, message, method)
            return False
        if message.id in conn.running:
            await self._duplicate(conn, message)
            return False
        return await self._dispatch(conn, job, message, method, handler, reply=True)

    async def _on_reserved(self, conn: _Connection, message: Message) -> bool:
        method = message.method
        if method == "ipc.hello":
            await self._hello(conn, message)
        elif method == "ipc.health":
            await self._send(conn, message.reply(self.health()))
        elif method == "ipc.stats":
            await self._send(conn, message.reply(self.get_stats()))
        elif method == "ipc.stream":
            await self._start_stream(conn, message)
        else:
            await self._unknown(conn, message, method)
        return False

    async def _unknown(self, conn: _Connection, message: Message, method: str) -> None:
        self._counters["errors"] += 1
        known = ", ".join(self.methods) or "(none)"
        await self._send(
            conn,
            Message.error(message.id, method, ERR_UNKNOWN_METHOD, f"unknown method {method!r}; known: {known}"[:500]),
        )

    async def _duplicate(self, conn: _Connection, message: Message) -> None:
        self._counters["errors"] += 1
        await self._send(conn, message.reply_error(ERR_BAD_MESSAGE, f"request id {message.id!r} is already in flight"))

    async def _dispatch(
        self, conn: _Connection, job: _Job, message: Message, method: str, handler: Handler, reply: bool
    ) -> bool:
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
        ok = False
        handed_off = False
        answer: Message | None = None
        context = (conn.id, message.id, method, self)
        token = _current.set(context)
        try:
            try:
                result = first_step(handler(message.data))
                blocked = isinstance(result, Blocked)
                conn.role.record(blocked)
                if blocked:
                    # From here on no cancel scope may be entered around the coroutine
                    # (it may hold scopes of its own): only the task's.
                    _current.reset(token)  # the new reader must not inherit this request
                    handed_off = conn.role.hand_off()
                    token = _current.set(context)
                    result = await self._finish_blocking(conn, job, message, result, handed_off)
                if getattr(type(result), "__aiter__", None) is not None:
                    await _close_quietly(result)
                    raise TypeError(f"method {method!r} streams: call it with client.stream()")
                answer = Message(Kind.RESPONSE, message.id, method, result)
                ok = True
            except ReplyError as exc:
                answer = message.reply_error(exc.code, exc.detail)
            except Exception as exc:
                self._counters["errors"] += 1
                self.log.exception("handler for %r (connection %s, id %r) failed", method, conn.id, message.id)
                answer = message.reply_error(ERR_HANDLER, f"{type(exc).__name__}: {exc}"[:2000])
            finally:
                _current.reset(token)
                stats = self._method_stats.get(method)
                if stats is None:
                    stats = self._method_stats[method] = _MethodStats()
                stats.record(time.perf_counter() - started, ok)
            if reply:
                try:
                    frame = encode_frame(answer, conn.framed.codec, self.max_frame_size)
                    await conn.framed.send_frame(frame, self.send_timeout)
                    self._counters["messages_sent"] += 1
                except (CodecError, FrameTooLarge):
                    await self._send(conn, answer)  # replaces it with an error naming the problem
                except SendTimeout:
                    self._dropped_stuck(conn)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        finally:
            if handed_off:
                conn.role.release()
        return handed_off

    async def _finish_blocking(
        self, conn: _Connection, job: _Job, message: Message, blocked: Blocked, handed_off: bool
    ) -> Any:
        """Drive a handler coroutine that blocked to its end, in this task, under ``job.scope``."""
        job.message = message
        job.handed_off = handed_off
        registered = bool(message.id) and message.id not in conn.running
        if registered:
            conn.running[message.id] = job.scope
        if not handed_off:
            conn.framed.paused = True
        try:
            return await resume(blocked)
        finally:
            if registered:
                del conn.running[message.id]
            if not handed_off:
                conn.framed.paused = False

    # -- streams --------------------------------------------------------------
    async def _start_stream(self, conn: _Connection, message: Message) -> None:
        body = message.data
        if not isinstance(body, dict) or not isinstance(body.get("method"), str):
            self._counters["errors"] += 1
            await self._send(
                conn,
                message.reply_error(
                    ERR_BAD_MESSAGE, "ipc.stream needs data {'method': <text>, 'data': <any>, 'window': <int>}"
                ),
            )
            return
        method = body["method"]
        window = body.get("window", 16)
        if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= 65536:
            self._counters["errors"] += 1
            await self._send(
                conn, message.reply_error(ERR_BAD_MESSAGE, "ipc.stream 'window' must be an integer in 1..65536")
            )
            return
        if self._draining:
            await self._send(conn, message.reply_error(ERR_SHUTTING_DOWN, "server is shutting down"))
            return
        handler = self._handlers.get(method)
        if handler is None:
            await self._unknown(conn, message, method)
            return
        if message.id in conn.running:
            await self._duplicate(conn, message)
            return
        await self._take_slot(conn)
        scope = conn.running[message.id] = trio.CancelScope()
        conn.credits[message.id] = trio.Semaphore(window)
        assert conn.nursery is not None
        conn.nursery.start_soon(self._run_stream, conn, message, method, handler, body.get("data"), scope)

    async def _take_slot(self, conn: _Connection) -> None:
        """One of the connection's ``max_in_flight`` slots; while none is free, stop reading."""
        try:
            conn.slots.acquire_nowait()
        except trio.WouldBlock:
            conn.framed.paused = True
            try:
                await conn.slots.acquire()
            finally:
                conn.framed.paused = False

    async def _run_stream(
        self, conn: _Connection, message: Message, method: str, handler: Handler, data: Any, scope: trio.CancelScope
    ) -> None:
        _current.set((conn.id, message.id, method, self))
        started = time.perf_counter()
        ok = False
        answer: Message
        try:
            with scope:
                await self._stream_items(conn, message, method, handler, data)
                ok = True
            if scope.cancelled_caught:
                ok = False
                if self._draining:
                    answer = message.reply_error(ERR_SHUTTING_DOWN, "server is shutting down")
                else:
                    answer = message.reply_error(ERR_CANCELLED, "cancelled by the client")
            else:
                answer = Message(Kind.RESPONSE, message.id, method, None)
        except ReplyError as exc:
            answer = message.reply_error(exc.code, exc.detail)
        except Exception as exc:
            if conn.framed.closed and isinstance(exc, (trio.ClosedResourceError, trio.BrokenResourceError)):
                return  # the client went away mid-stream; nobody to answer
            self._counters["errors"] += 1
            self.log.exception("stream handler for %r (connection %s, id %r) failed", method, conn.id, message.id)
            answer = message.reply_error(ERR_HANDLER, f"{type(exc).__name__}: {exc}"[:2000])
        finally:
            del conn.running[message.id]
            conn.credits.pop(message.id, None)
            conn.slots.release()
            self._method_stats.setdefault(method, _MethodStats()).record(time.perf_counter() - started, ok)
            if not conn.running:
                self._idle.set()
        await self._send(conn, answer)

    async def _stream_items(
        self, conn: _Connection, message: Message, method: str, handler: Handler, data: Any
    ) -> None:
        items = handler(data)
        if inspect.isawaitable(items):
            items = await items
        if not isinstance(items, AsyncIterable):
            raise TypeError(f"method {method!r} does not stream (its handler returned {type(items).__name__})")
        credits = conn.credits[message.id]
        iterator = aiter(items)
        try:
            async for item in iterator:
                await credits.acquire()
                frame = encode_frame(
                    Message(Kind.PUSH, message.id, method, item), conn.framed.codec, self.max_frame_size
                )
                # A write cut short by a cancel (client's ipc.cancel, shutdown) would
                # break the framing for everyone on this connection; finish it first.
                with trio.CancelScope(shield=True), trio.move_on_after(self.send_timeout):
                    await conn.framed.send_frame(frame)
                if conn.framed.closed:
                    raise trio.ClosedResourceError(f"connection {conn.id} closed")
                self._counters["messages_sent"] += 1
        finally:
            await _close_quietly(iterator)

    # -- client pushes ----------------------------------------------------------
    async def _on_push(self, conn: _Connection, job: _Job, message: Message) -> bool:
        method, data = message.method, message.data
        if method == "ipc.cancel":
            target = data.get("id") if isinstance(data, dict) else None
            scope = conn.running.get(target) if isinstance(target, str) else None
            if scope is not None:
                scope.cancel()
            return False
        if method == "ipc.credit":
            target = data.get("id") if isinstance(data, dict) else None
            n = data.get("n") if isinstance(data, dict) else None
            credits = conn.credits.get(target) if isinstance(target, str) else None
            if credits is not None and isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 65536:
                for _ in range(n):
                    credits.release()
            return False
        handler = self._handlers.get(method)
        if handler is None or self._draining:
            self._counters["errors"] += 1
            if handler is None:
                await self._send(conn, message.reply_error(ERR_UNKNOWN_METHOD, f"unknown method {method!r} for a push"))
            else:
                await self._send(conn, message.reply_error(ERR_SHUTTING_DOWN, "server is shutting down"))
            return False
        return await self._dispatch(conn, job, message, method, handler, reply=False)

    async def _hello(self, conn: _Connection, message: Message) -> None:
        wanted = message.data.get("account_id") if isinstance(message.data, dict) else None
        if wanted and wanted != self.account_id:
            self._counters["errors"] += 1
            self.log.warning("connection %s asked for account %r; this server is %r", conn.id, wanted, self.account_id)
            await self._send(
                conn,
                message.reply_error(
                    ERR_ACCOUNT_MISMATCH, f"this server serves account {self.account_id!r}, not {wanted!r}"
                ),
            )
            conn.framed.close()
            return
        await self._send(
            conn,
            message.reply(
                {
                    "server": "switchyard",
                    "account_id": self.account_id,
                    "conn_id": conn.id,
                    "codec": conn.framed.codec.name,
                    "heartbeat_interval": self.heartbeat_interval,
                    "heartbeat_timeout": self.heartbeat_timeout if self.heartbeat_interval else 0.0,
                    "max_frame_size": self.max_frame_size,
                }
            ),
        )

    # -- push, health, stats --------------------------------------------------
    @property
    def connections(self) -> list[str]:
        """Ids of the connected clients (as in ``current_request().conn_id``)."""
        return list(self._conns)

    def is_connected(self) -> bool:
        return bool(self._conns)

    def get_connection_count(self) -> int:
        return len(self._conns)

    async def push(self, method: str, data: Any = None, *, conn_id: str | None = None) -> int:
        """Push ``method``/``data`` to one client (``conn_id``) or all; returns how many got it.

        ``LookupError`` for an unknown ``conn_id``; ``CodecError`` / ``FrameTooLarge``
        if ``data`` cannot be sent. A client that cannot take the push within
        ``send_timeout`` seconds is dropped (and not counted).
        """
        if conn_id is not None:
            try:
                targets = [self._conns[conn_id]]
            except KeyError:
                raise LookupError(
                    f"no connection {conn_id!r}; connected: {', '.join(self._conns) or '(none)'}"
                ) from None
        else:
            targets = list(self._conns.values())
        message = Message.push(method, data)
        frames: dict[str, bytes] = {}
        for conn in targets:  # encode once per codec; fail before sending anything
            codec: Codec = conn.framed.codec
            if codec.name not in frames:
                frames[codec.name] = encode_frame(message, codec, self.max_frame_size)
        delivered = 0

        async def deliver(conn: _Connection) -> None:
            nonlocal delivered
            with trio.move_on_after(self.send_timeout) as scope:
                try:
                    await conn.framed.send_frame(frames[conn.framed.codec.name])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                delivered += 1
                self._counters["messages_sent"] += 1
            if scope.cancelled_caught:
                self._counters["errors"] += 1
                self.log.warning("dropped connection %s: push %r blocked for %g s", conn.id, method, self.send_timeout)
                conn.framed.close()

        if len(targets) == 1:
            await deliver(targets[0])
        else:
            async with trio.open_nursery() as nursery:
                for conn in targets:
                    nursery.start_soon(deliver, conn)
        return delivered

    async def send_push(self, push_type: str, data: Any = None) -> bool:
        """The seed's broadcast: True if at least one client got the push."""
        return await self.push(push_type, data) > 0

    def health(self) -> dict[str, Any]:
        """What ``ipc.health`` answers: status, account, uptime, connections."""
        return {
            "status": "draining" if self._draining else "ok",
            "account_id": self.account_id,
            "address": str(self.bound_address or self.address),
            "uptime_s": round(time.time() - self._started_at, 3) if self._started_at else 0.0,
            "connections": len(self._conns),
            "handlers": len(self._handlers),
        }

    def get_stats(self) -> dict[str, Any]:
        """Counters since start: connections (current and total), messages in/out, errors,
        and per method ``calls`` / ``errors`` / ``mean_ms`` / ``max_ms``."""
        in_flight = sum(len(conn.running) for conn in self._conns.values())
        return {
            "account_id": self.account_id,
            "address": str(self.bound_address or self.address),
            "connections": len(self._conns),
            **self._counters,
            "in_flight": in_flight,
            "methods": {name: stats.snapshot() for name, stats in sorted(self._method_stats.items())},
        }
