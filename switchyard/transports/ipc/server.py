"""IPC socket server: named handlers over Unix-domain or TCP stream sockets.

Quick start::

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

import itertools
import logging
import time
import types
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import trio

from switchyard.protocols.codec import Codec
from switchyard.protocols.ipc import (
    ERR_SHUTTING_DOWN,
    Message,
)
from switchyard.protocols.ipc_framing import DEFAULT_MAX_FRAME_SIZE, encode_frame
from switchyard.runtime.ratelog import RateLimitedLog
from switchyard.transports.ipc.address import (
    IpcAddress,
    default_socket_dir,
    ensure_private_dir,
    open_listener,
    parse_address,
    socket_path_for,
)
from switchyard.transports.ipc.connection import FramedConnection
from switchyard.transports.ipc.server_connection import (
    RESERVED_PREFIX,
    Handler,
    RequestContext,
    ServerConnection,
    current_request,
)
from switchyard.transports.ipc.stats import MethodStats

__all__ = ["RequestContext", "SocketServer", "current_request", "request"]

ERR_TOO_MANY_CONNECTIONS = "too_many_connections"


def request(method: str) -> Callable[[Handler], Handler]:
    """Mark a function or method as the handler of ``method``.

    Marking alone registers nothing: pass the function to
    :meth:`SocketServer.register_handler`, or an object whose marked methods should
    all be served to :meth:`SocketServer.register_handlers_from_instance`.
    """

    def mark(fn: Handler) -> Handler:
        fn._ipc_method = method  # type: ignore[attr-defined]
        return fn

    return mark


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
        self._conns: dict[str, ServerConnection] = {}
        self._conn_ids = itertools.count(1)
        self._method_stats: dict[str, MethodStats] = {}
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
        conn = ServerConnection(self, conn_id, framed, peer)
        self._conns[conn_id] = conn
        self._counters["connections_total"] += 1
        self.log.debug("connection %s from %s", conn_id, peer)
        try:
            await conn.run()
        finally:
            del self._conns[conn_id]
            framed.close()
            self._idle.set()
            self.log.info("connection %s from %s ended: %s", conn_id, peer, conn.end_reason or "server stopped")

    # -- push, health, stats --------------------------------------------------
    @property
    def connections(self) -> list[str]:
        """Ids of the connected clients (as in ``current_request().conn_id``)."""
        return list(self._conns)

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

        async def deliver(conn: ServerConnection) -> None:
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

    # -- compatibility names ----------------------------------------------------
    # The method names of the asyncio IPC API this server replaces, so code written
    # against it ports with few changes (docs/ipc.md, "Differences from the asyncio version"). New code should use
    # the names on the right.

    #: ``await server.start()`` serves until cancelled: :meth:`serve`.
    start = serve
    #: :meth:`aclose`.
    stop = aclose

    def is_connected(self) -> bool:
        """True while at least one client is connected (``bool(server.connections)``)."""
        return bool(self._conns)

    def get_connection_count(self) -> int:
        """How many clients are connected (``len(server.connections)``)."""
        return len(self._conns)

    async def send_push(self, push_type: str, data: Any = None) -> bool:
        """Broadcast: True if at least one client got the push (:meth:`push` returns how many)."""
        return await self.push(push_type, data) > 0
