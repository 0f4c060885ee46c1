"""IPC socket client: requests, streams and pushes, with reconnect and heartbeats.

Quick start::

    async with SocketClient("/tmp/test.sock", account_id="test_account") as client:

        @client.on_push("notification")
        async def on_notification(push_type, data):
            print("push:", data)

        client.set_connect_callback(lambda: print("connected"))
        client.set_disconnect_callback(lambda: print("disconnected"))

        if not await client.connect(max_retries=5):
            return
        print(await client.request("echo", {"message": "hello"}))
        print(await client.health_check(), client.get_stats())

What a caller may rely on:

* Everything the client runs (connection manager, reader, heartbeat, push
  dispatcher) lives in the nursery of its ``async with`` block; leaving the block
  disconnects and stops it all.
* :meth:`request` returns the handler's result or raises: ``RemoteError`` (the
  server answered an error; ``.code`` says which), ``RequestTimeout`` (nothing
  within ``timeout``, counting any wait for a reconnect), ``ConnectionLost`` (the
  connection dropped while the request was in flight; it is not retried),
  ``NotConnected`` (not connected and no reconnect is coming). A request id is
  never reused, and answers are matched per connection, so a request can never
  receive another request's answer.
* A request made while the connection is down waits for the reconnect, up to its
  timeout.
* After a drop the client reconnects with back-off: ``reconnect_interval`` (0.5 s),
  x ``reconnect_multiplier`` (1.5) per failure, at most ``reconnect_max_interval``
  (15 s), each delay jittered by +-``reconnect_jitter`` (10 %); it gives up after
  ``max_reconnect_attempts`` failures in a row (0 = never).
* With heartbeats on, the server is pinged after ``heartbeat_interval`` idle seconds
  and the connection is dropped (then reconnected) when nothing at all arrives for
  ``heartbeat_timeout`` seconds.
* Push handlers run one at a time, in arrival order, in their own task; one that
  raises is logged and the next push is delivered. If ``push_queue_size`` pushes
  are waiting, the client stops reading the socket until a handler catches up.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any

import trio

from switchyard.protocols.codec import get_codec
from switchyard.protocols.ipc import Kind, Message
from switchyard.protocols.ipc_framing import DEFAULT_MAX_FRAME_SIZE, encode_message
from switchyard.transports.ipc.address import IpcAddress, parse_address, socket_path_for
from switchyard.transports.ipc.backoff import Backoff
from switchyard.transports.ipc.client_connection import ClientConnection, HandshakeFailed, open_connection
from switchyard.transports.ipc.deadlines import Deadlines, Pending
from switchyard.transports.ipc.errors import ConnectionLost, NotConnected, RequestTimeout
from switchyard.transports.ipc.stream import IpcStream

__all__ = ["Backoff", "IpcStream", "SocketClient", "open_ipc_client"]

PushHandler = Callable[[str, Any], Any]


class SocketClient:
    """Client of a :class:`~switchyard.transports.ipc.server.SocketServer`. See the module docstring."""

    def __init__(
        self,
        socket_path: str | IpcAddress | None = None,
        account_id: str | None = None,
        on_data_callback: PushHandler | None = None,
        *,
        codec: str = "json",
        auto_reconnect: bool = True,
        reconnect_interval: float = 0.5,
        reconnect_multiplier: float = 1.5,
        reconnect_max_interval: float = 15.0,
        reconnect_jitter: float = 0.1,
        max_reconnect_attempts: int = 0,
        heartbeat_interval: float = 15.0,
        heartbeat_timeout: float | None = None,
        request_timeout: float | None = 10.0,
        connect_timeout: float = 5.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        stream_window: int = 16,
        push_queue_size: int = 256,
        logger: logging.Logger | None = None,
    ) -> None:
        """``socket_path``: Unix socket path or ``tcp://host:port``; ``None`` means the
        account's path (:func:`~switchyard.transports.ipc.address.socket_path_for`).
        ``account_id``, if given, must match the server's (checked at connect).
        ``heartbeat_interval`` 0 turns heartbeats off; ``heartbeat_timeout`` defaults
        to 3 x the interval. ``on_data_callback(push_type, data)`` gets pushes that
        no :meth:`on_push` handler claims.
        """
        if socket_path is None:
            if account_id is None:
                raise ValueError("give socket_path or account_id")
            socket_path = socket_path_for(account_id)
        self.address = parse_address(socket_path)
        self.account_id = account_id
        self._codec = get_codec(codec)
        self.auto_reconnect = auto_reconnect
        self._backoff_args = (reconnect_interval, reconnect_multiplier, reconnect_max_interval, reconnect_jitter)
        Backoff(*self._backoff_args)  # validate now, not at the first drop
        self.max_reconnect_attempts = max_reconnect_attempts
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout if heartbeat_timeout is not None else 3 * heartbeat_interval
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.max_frame_size = max_frame_size
        if not 1 <= stream_window <= 65536:
            raise ValueError("stream_window must be in 1..65536")
        self.stream_window = stream_window
        self.log = logger or logging.getLogger("switchyard.ipc.client")

        self._push_handlers: dict[str, PushHandler] = {}
        self._on_data = on_data_callback
        self._on_connect: Callable[[], Any] | None = None
        self._on_disconnect: Callable[[], Any] | None = None
        self._push_send, self._push_receive = trio.open_memory_channel[tuple[str, Any]](push_queue_size)

        self._conn: ClientConnection | None = None
        self._changed = trio.Event()
        self._managing = False
        self._manager_scope: trio.CancelScope | None = None
        self._closing = False
        self._nursery: trio.Nursery | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._deadlines = Deadlines(self._expire)
        self._id_prefix = uuid.uuid4().hex[:8]
        self._ids = itertools.count(1)
        self._stats = {
            "connects": 0,
            "disconnects": 0,
            "failed_connects": 0,
            "requests": 0,
            "timeouts": 0,
            "connection_lost": 0,
            "remote_errors": 0,
            "pushes": 0,
            "errors": 0,
        }
        self._sent_before = 0
        self._received_before = 0

    # -- setup ------------------------------------------------------------------
    def on_push(self, push_type: str) -> Callable[[PushHandler], PushHandler]:
        """Decorator: ``handler(push_type, data)`` (sync or async) gets pushes of ``push_type``."""

        def register(fn: PushHandler) -> PushHandler:
            self._push_handlers[push_type] = fn
            return fn

        return register

    def set_connect_callback(self, callback: Callable[[], Any] | None) -> None:
        """Called (sync or async) after every successful connect, including reconnects."""
        self._on_connect = callback

    def set_disconnect_callback(self, callback: Callable[[], Any] | None) -> None:
        """Called (sync or async) after every drop of an established connection,
        except one asked for with :meth:`disconnect` or by leaving the block."""
        self._on_disconnect = callback

    async def __aenter__(self) -> SocketClient:
        if self._exit_stack is not None or self._closing:
            raise RuntimeError("a SocketClient is entered once")
        stack = AsyncExitStack()
        self._nursery = await stack.enter_async_context(trio.open_nursery())
        self._nursery.start_soon(self._dispatch_pushes)
        self._nursery.start_soon(self._deadlines.run)
        self._exit_stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._exit_stack = self._exit_stack, None
        self._shutdown("client closed")
        self._push_send.close()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)

    # -- connection management ----------------------------------------------
    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.framed.closed

    def is_connected(self) -> bool:
        return self.connected

    async def connect(self, max_retries: int = 1) -> bool:
        """Connect, trying up to ``max_retries`` times with back-off (0 = until it works).

        Returns whether it connected. Once connected, the client keeps the connection
        up by itself (``auto_reconnect``) until :meth:`disconnect` or the end of the
        ``async with`` block.
        """
        if self._nursery is None:
            raise RuntimeError("use the client as `async with SocketClient(...) as client:` before connect()")
        if self._closing:
            raise NotConnected("client is closed")
        if self.connected:
            return True
        if self._managing:  # a reconnect loop is running already: wait for its outcome
            while self._managing and not self.connected:
                await self._changed.wait()
            return self.connected
        return await self._nursery.start(self._manage, max_retries)

    def start_connecting(self) -> None:
        """Connect in the background, retrying until it works, and return at once.

        For callers that must not wait for the server (an actor starting before its
        peer): requests made meanwhile wait for the connection up to their timeout.
        """
        if self._nursery is None:
            raise RuntimeError("use the client as `async with SocketClient(...) as client:` first")
        if self._closing:
            raise NotConnected("client is closed")
        if not self._managing and not self.connected:
            self._managing = True  # now, so that requests made right away wait
            self._nursery.start_soon(self._manage, 0)

    async def disconnect(self) -> None:
        """Close the connection and stop reconnecting; in-flight requests fail with
        ``ConnectionLost``, later ones with ``NotConnected`` until :meth:`connect`."""
        self._shutdown("disconnected by the client")
        while self._managing:
            await self._changed.wait()
        await trio.lowlevel.checkpoint()
        if self._exit_stack is not None:  # still inside the block: connect() may be called again
            self._closing = False

    def _shutdown(self, reason: str) -> None:
        self._closing = True
        if self._manager_scope is not None:
            self._manager_scope.cancel()
        if self._conn is not None:
            self._conn.end(reason)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _manage(self, max_retries: int, task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED) -> None:
        backoff = Backoff(*self._backoff_args)
        first = True
        failures = 0
        self._managing = True
        try:
            with trio.CancelScope() as self._manager_scope:
                while not self._closing:
                    try:
                        conn = await open_connection(
                            self,
                            self.address,
                            codec=self._codec,
                            max_frame_size=self.max_frame_size,
                            connect_timeout=self.connect_timeout,
                            hello=self._hello(),
                        )
                    except (OSError, trio.TooSlowError, HandshakeFailed) as exc:
                        failures += 1
                        self._stats["failed_connects"] += 1
                        limit = max_retries if first else self.max_reconnect_attempts
                        if limit and failures >= limit:
                            self.log.warning(
                                "could not connect to %s after %d attempts: %s", self.address, failures, exc
                            )
                            if first:
                                first = False
                                task_status.started(False)
                            return
                        delay = backoff.next()
                        self.log.info("connect to %s failed (%s); retrying in %.2f s", self.address, exc, delay)
                        await trio.sleep(delay)
                        continue
                    failures = 0
                    backoff.reset()
                    self._conn = conn
                    self._stats["connects"] += 1
                    self._notify()
                    self.log.info("connected to %s (connection %s)", self.address, conn.conn_id)
                    await self._call(self._on_connect, "connect callback")
                    if first:
                        first = False
                        task_status.started(True)
                    reason = await self._run(conn)
                    self._drop(conn, reason)
                    await self._call(self._on_disconnect, "disconnect callback")
                    if not self.auto_reconnect or self._closing:
                        return
                    await trio.sleep(backoff.next())
        finally:
            if first:  # cancelled (disconnect, end of block) before the first outcome
                task_status.started(False)
            self._managing = False
            if self._conn is not None:
                self._drop(self._conn, self._conn.drop_reason or "client closed")
            self._notify()

    def _hello(self) -> Message:
        return Message.request(
            f"{self._id_prefix}-hello-{next(self._ids)}",
            "ipc.hello",
            {"account_id": self.account_id, "client": "switchyard", "codec": self._codec.name},
        )

    async def _run(self, conn: ClientConnection) -> str:
        async with trio.open_nursery() as nursery:
            if self.heartbeat_interval:
                nursery.start_soon(self._keepalive, conn)
            reason = await conn.run()
            nursery.cancel_scope.cancel()
        return conn.drop_reason or reason

    async def _keepalive(self, conn: ClientConnection) -> None:
        reason = await conn.framed.keepalive(self.heartbeat_interval, self.heartbeat_timeout)
        if reason != "closed":
            self.log.warning("dropping connection to %s: %s", self.address, reason)
        conn.end(reason)

    def _drop(self, conn: ClientConnection, reason: str) -> None:
        """Forget ``conn`` and fail everything in flight on it."""
        conn.end(reason)
        if self._conn is conn:
            self._conn = None
            self._stats["disconnects"] += 1
            self._sent_before += conn.framed.messages_out
            self._received_before += conn.framed.messages_in
            self.log.info("connection to %s lost: %s", self.address, reason)
            self._notify()
        for id, pending in list(conn.pending.items()):
            pending.fail(ConnectionLost(str(self.address), pending.method, id, reason))
        conn.pending.clear()
        for id, stream in list(conn.streams.items()):
            stream._finish(ConnectionLost(str(self.address), stream.method, id, reason))
        conn.streams.clear()

    async def _call(self, callback: Callable[[], Any] | None, what: str) -> None:
        if callback is None:
            return
        try:
            result = callback()
            if inspect.isawaitable(result):
                await result
        except Exception:
            self._stats["errors"] += 1
            self.log.exception("%s failed", what)

    # -- pushes ---------------------------------------------------------------
    async def _dispatch_pushes(self) -> None:
        async with self._push_receive:
            async for push_type, data in self._push_receive:
                handler = self._push_handlers.get(push_type, self._on_data)
                if handler is None:
                    self.log.debug("push %r has no handler", push_type)
                    continue
                try:
                    result = handler(push_type, data)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    self._stats["errors"] += 1
                    self.log.exception("push handler for %r failed", push_type)

    # -- requests -------------------------------------------------------------
    async def _connection(self) -> ClientConnection:
        """The live connection, waiting for a reconnect if one is coming."""
        while True:
            conn = self._conn
            if conn is not None and not conn.framed.closed:
                return conn
            if self._closing or not self._managing:
                raise NotConnected(f"not connected to {self.address}" + (" (client closed)" if self._closing else ""))
            await self._changed.wait()

    def _new_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    async def request(self, method: str, data: Any = None, timeout: float | None = None) -> Any:
        """Call ``method`` on the server and return its result (see the module docstring).

        ``timeout`` (default ``request_timeout``; ``None`` in both = no limit) covers
        waiting for a reconnect, sending and the answer.
        """
        timeout = self.request_timeout if timeout is None else timeout
        deadline = trio.current_time() + (math.inf if timeout is None else timeout)
        self._stats["requests"] += 1
        conn = self._conn
        if conn is None or conn.framed.closed:
            with trio.move_on_at(deadline):
                conn = await self._connection()
            if conn is None or conn.framed.closed:
                self._stats["timeouts"] += 1
                raise RequestTimeout(method, math.inf if timeout is None else timeout)
        id = f"{self._id_prefix}-{next(self._ids)}"
        framed = conn.framed
        frame = encode_message(Kind.REQUEST, id, method, data, framed.codec, self.max_frame_size)
        pending = conn.pending[id] = Pending(method, id, conn, math.inf if timeout is None else timeout, deadline)
        try:
            await framed.send_frame(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.pending.pop(id, None)
            self._stats["connection_lost"] += 1
            raise ConnectionLost(str(self.address), method, id, conn.drop_reason or "closed") from None
        except BaseException:
            conn.pending.pop(id, None)
            raise
        # Bookkeeping after the write, while the server works on the request.
        deadlines = self._deadlines
        deadlines.collect()
        if timeout is not None:
            deadlines.add(pending)
        try:
            if conn.free_to_read():  # the usual lone request: it reads its answer itself
                await conn.read_for(pending)
            if not pending.done:
                await conn.wait_answer(pending)
        except BaseException:  # cancelled by our caller: tell the server not to bother
            if conn.pending.pop(id, None) is not None and self._nursery is not None:
                self._nursery.start_soon(self._send_cancel, conn, id)
            raise
        if pending.error is not None:
            if isinstance(pending.error, ConnectionLost):
                self._stats["connection_lost"] += 1
            elif isinstance(pending.error, RequestTimeout):
                self._stats["timeouts"] += 1
            raise pending.error
        return pending.value

    def _expire(self, pending: Pending) -> None:
        conn = pending.conn
        if conn.pending.pop(pending.id, None) is not None and self._nursery is not None:
            self._nursery.start_soon(self._send_cancel, conn, pending.id)
        pending.fail(RequestTimeout(pending.method, pending.timeout))
        conn.interrupt(pending)

    async def notify(self, method: str, data: Any = None, timeout: float | None = None) -> None:
        """Send a ``push`` to the server: its handler runs, nothing is answered."""
        timeout = self.request_timeout if timeout is None else timeout
        with trio.move_on_after(math.inf if timeout is None else timeout):
            conn = await self._connection()
            try:
                await conn.framed.send(Message.push(method, data))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ConnectionLost(str(self.address), method, "", conn.drop_reason or "closed") from None
            return
        raise RequestTimeout(method, math.inf if timeout is None else timeout)

    def stream(self, method: str, data: Any = None) -> IpcStream:
        """Call a streaming ``method``: ``async with client.stream(m, d) as items: async for item in items``.

        At most ``stream_window`` items are in transit at a time (the server waits
        for credit), so a slow consumer slows the producer, not the connection.
        Leaving the block early cancels the server's handler.
        """
        return IpcStream(self, method, data)

    async def _send_cancel(self, conn: ClientConnection, id: str) -> None:
        """Best effort: tell the server to stop working on ``id``."""
        with trio.move_on_after(1.0):
            try:
                await conn.framed.send(Message.push("ipc.cancel", {"id": id}))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    # -- health and stats -----------------------------------------------------
    async def health_check(self, timeout: float = 5.0) -> bool:
        """Whether the server answers a heartbeat within ``timeout`` seconds."""
        conn = self._conn
        if conn is None or conn.framed.closed:
            return False
        return await conn.framed.ping(timeout) is not None

    async def server_health(self, timeout: float | None = None) -> dict[str, Any]:
        """The server's own health report (``ipc.health``)."""
        return await self.request("ipc.health", None, timeout)

    def get_stats(self) -> dict[str, Any]:
        """Connection state and counters since the client was made."""
        conn = self._conn
        sent = self._sent_before + (conn.framed.messages_out if conn else 0)
        received = self._received_before + (conn.framed.messages_in if conn else 0)
        return {
            "connected": self.connected,
            "address": str(self.address),
            "account_id": self.account_id,
            "conn_id": conn.conn_id if conn else None,
            "codec": self._codec.name,
            "pending_requests": len(conn.pending) if conn else 0,
            "open_streams": len(conn.streams) if conn else 0,
            "auto_reconnect": self.auto_reconnect,
            "reconnecting": self._managing and not self.connected,
            "heartbeat_interval": self.heartbeat_interval,
            "max_reconnect_attempts": self.max_reconnect_attempts,
            "messages_sent": sent,
            "messages_received": received,
            **self._stats,
        }


@asynccontextmanager
async def open_ipc_client(
    address: str | IpcAddress, *, max_retries: int = 1, **options: Any
) -> AsyncIterator[SocketClient]:
    """A connected :class:`SocketClient` for the block; ``NotConnected`` if it cannot connect."""
    async with SocketClient(address, **options) as client:
        if not await client.connect(max_retries=max_retries):
            raise NotConnected(f"could not connect to {client.address} in {max_retries} attempt(s)")
        yield client
