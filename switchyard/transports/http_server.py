"""A small HTTP/1.1 server on Trio, built on h11, with WebSocket hand-off.

Engine.IO needs plain HTTP for long-polling and a WebSocket on the same port and
path. This module serves the first and hands the second, untouched, to the caller.

Why h11 rather than a full server (hypercorn, uvicorn, quart-trio):

* it is sans-IO, like our ``protocols/``: the request cycle, keep-alive and framing
  rules are h11's, the sockets, limits and timeouts are ours and explicit;
* it is small, typed and maintained by python-hyper (it also underlies httpcore/httpx
  and is what wsproto parses the upgrade request with), so no
  new dependency is pulled in;
* an ASGI server would put a second application model between the socket and the
  Engine.IO session, and make the WebSocket side its own instead of ours
  (:mod:`switchyard.transports.websocket_server`, over wsproto).

What a caller may rely on:

* ``handler(request) -> Response`` is called once per complete request; the body is
  read in full first and is at most ``limits.max_body_bytes`` (bigger: ``413`` and the
  connection closes, the handler never sees it);
* ``precheck(request) -> Response | None``, when given, sees each request as soon as
  its head is parsed (``body`` empty); a response it returns is sent at once with
  ``Connection: close`` and the body is never read (an unknown path, session or method
  costs no body bytes);
* request bodies are held in memory only up to ``limits.max_buffered_bytes`` summed
  over all connections (a declared ``Content-Length`` is reserved up front); a request
  past that total gets ``503`` and the connection closes;
* a ``GET`` carrying ``Upgrade: websocket`` goes to ``upgrade_handler(request, stream)``
  instead; ``stream`` replays the request bytes, so a WebSocket library can parse the
  handshake itself (:func:`switchyard.transports.websocket_server.handshake`). The handler owns the stream;
* timeouts: a connection waiting for (the first byte of) a request is closed after
  ``limits.idle_timeout``; a request head must be complete within
  ``limits.header_timeout`` of its first byte, the whole request within
  ``limits.request_timeout``;
* connection caps: at most ``limits.max_connections`` connections in all and
  ``limits.max_connections_per_peer`` from one IP address. A connection past a cap
  first sheds the oldest connection (of that peer, for the per-peer cap) that is idle
  or still sending its request head, else the oldest one still sending a body; only
  when there is none is the new one closed at once. Connections inside a handler or
  handed to ``upgrade_handler`` are never shed;
* a handler exception answers ``500`` and is logged; the server goes on. Refused
  requests and connections are logged as single rate-limited lines.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Iterable

import attrs
import h11
import trio

from switchyard.runtime.ratelog import RateLimitedLog

__all__ = ["HttpLimits", "HttpServer", "PrefixedStream", "Request", "Response"]

log = logging.getLogger("switchyard.transports.http")


@attrs.frozen
class HttpLimits:
    """The HTTP server's limits (see the module docstring); 0 disables a cap."""

    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 1 << 20
    max_buffered_bytes: int = 256 << 20  # request bodies held at once, all connections
    idle_timeout: float = 10.0  # waiting for the first byte of a request
    header_timeout: float = 5.0  # first byte to the end of the request head
    request_timeout: float = 60.0  # first byte to the end of the body
    max_connections: int = 256
    max_connections_per_peer: int = 64


@attrs.frozen
class Request:
    method: str
    target: str
    path: str
    query: str
    #: header names lower-cased, values decoded as latin-1 (as HTTP defines)
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    client: str = ""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def wants_websocket(self) -> bool:
        upgrade = (self.header("upgrade") or "").lower()
        connection = (self.header("connection") or "").lower()
        return self.method == "GET" and upgrade == "websocket" and "upgrade" in connection


@attrs.frozen
class Response:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


RequestHandler = Callable[[Request], Awaitable[Response]]
UpgradeHandler = Callable[[Request, trio.abc.Stream], Awaitable[None]]
Precheck = Callable[[Request], Response | None]


class _Phase(enum.Enum):
    IDLE = "idle"  # waiting for a request: sheddable
    HEAD = "head"  # receiving a request head: sheddable
    BODY = "body"
    BUSY = "busy"  # in a handler
    UPGRADED = "upgraded"


class _Conn:
    """Bookkeeping for one connection (the registry's view of it)."""

    __slots__ = ("counted", "peer", "phase", "scope", "since")

    def __init__(self, peer: str, now: float) -> None:
        self.peer = peer
        self.phase = _Phase.IDLE
        self.since = now
        self.scope = trio.CancelScope()
        self.counted = True

    def enter(self, phase: _Phase) -> None:
        self.phase = phase
        self.since = trio.current_time()

    @property
    def shed_rank(self) -> int:
        """0: shed first (idle, head), 1: then (a body still arriving), 2: never."""
        phase = self.phase
        if phase is _Phase.IDLE or phase is _Phase.HEAD:
            return 0
        return 1 if phase is _Phase.BODY else 2


class PrefixedStream(trio.abc.Stream):
    """A stream that first yields ``prefix`` and then reads from ``stream``."""

    def __init__(self, prefix: bytes, stream: trio.abc.Stream) -> None:
        self._prefix = prefix
        self._stream = stream

    @property
    def inner(self) -> trio.abc.Stream:
        """The wrapped stream (read it only after :meth:`take_prefix`)."""
        return self._stream

    def take_prefix(self) -> bytes:
        """The replayed bytes not read yet; from now on reads go to :attr:`inner`."""
        prefix, self._prefix = self._prefix, b""
        return prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            if max_bytes is None or max_bytes >= len(self._prefix):
                data, self._prefix = self._prefix, b""
            else:
                data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


class _Drop(Exception):
    """End this connection (peer error, limit or timeout), after an optional answer."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


class HttpServer:
    """Serve ``handler`` (and WebSocket upgrades) over HTTP/1.1."""

    def __init__(
        self,
        handler: RequestHandler,
        *,
        upgrade_handler: UpgradeHandler | None = None,
        precheck: Precheck | None = None,
        limits: HttpLimits = HttpLimits(),
        logger: logging.Logger | None = None,
        server_header: str = "switchyard",
    ) -> None:
        self.handler = handler
        self.upgrade_handler = upgrade_handler
        self.precheck = precheck
        self.limits = limits
        self.log = logger or log
        #: One line per refused request or connection, rate-limited.
        self.bad_input = RateLimitedLog(self.log, level=logging.INFO, what="refused HTTP requests")
        self._server_header = server_header.encode()
        self._conns: dict[_Conn, None] = {}  # insertion-ordered set
        self._per_peer: dict[str, int] = {}
        #: Request body bytes held now, over all connections.
        self.buffered = 0
        #: Connections closed to make room for new ones, and new ones refused.
        self.shed = 0
        self.refused = 0

    @property
    def connections(self) -> int:
        """Number of connections being served now."""
        return len(self._conns)

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on ``host:port`` (0: any free port) and serve until cancelled.

        ``task_status.started`` gets the bound port.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started(bound)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                stream = await listener.accept()
                conn = self._admit(_peer_host(stream))
                if conn is None:
                    self.refused += 1
                    with trio.CancelScope(shield=True):
                        await stream.aclose()
                    continue
                nursery.start_soon(self._connection, stream, conn)

    def _admit(self, peer: str) -> _Conn | None:
        """Register a new connection, shedding an idle one past a cap; None: refuse."""
        limits = self.limits
        if limits.max_connections_per_peer and self._per_peer.get(peer, 0) >= limits.max_connections_per_peer:
            if not self._shed_one(peer):
                self.bad_input("HTTP connection from %s refused: %d connections from it", peer, self._per_peer[peer])
                return None
        if limits.max_connections and len(self._conns) >= limits.max_connections:
            if not self._shed_one(None):
                self.bad_input("HTTP connection from %s refused: %d connections", peer, len(self._conns))
                return None
        conn = _Conn(peer, trio.current_time())
        self._conns[conn] = None
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        return conn

    def _shed_one(self, peer: str | None) -> bool:
        victim: _Conn | None = None
        best = (2, -float("inf"))  # rank 2 is never shed
        for conn in self._conns:
            key = (conn.shed_rank, conn.since)
            if key < best and (peer is None or conn.peer == peer):
                victim, best = conn, key
        if victim is None:
            return False
        self._forget(victim)
        victim.scope.cancel()
        self.shed += 1
        self.bad_input("HTTP connection from %s shed (%s) to make room", victim.peer, victim.phase.value)
        return True

    def _forget(self, conn: _Conn) -> None:
        if conn.counted:
            conn.counted = False
            del self._conns[conn]
            left = self._per_peer[conn.peer] - 1
            if left:
                self._per_peer[conn.peer] = left
            else:
                del self._per_peer[conn.peer]

    async def _connection(self, stream: trio.SocketStream, conn: _Conn) -> None:
        handed_off = False
        try:
            with conn.scope:
                handed_off = await self._serve_connection(stream, conn, _peer(stream))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            self.log.exception("HTTP connection failed")
        finally:
            self._forget(conn)
            if not handed_off:
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    async def _serve_connection(self, stream: trio.SocketStream, conn: _Conn, peer: str) -> bool:
        h11conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        while True:
            budget = _Budget(self)
            try:
                try:
                    request = await self._read_request(h11conn, stream, conn, peer, budget)
                except _Drop as drop:
                    if drop.status is not None and h11conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        self.bad_input("HTTP %d to %s: %s", drop.status, peer, drop)
                        await self._send_simple(h11conn, stream, drop.status, str(drop))
                    return False
                if request is None:
                    return False
                if isinstance(request, Response):  # refused by precheck; the body stays unread
                    await self._send_response(h11conn, stream, request, close=True)
                    return False
                if request.wants_websocket and self.upgrade_handler is not None:
                    conn.enter(_Phase.UPGRADED)
                    prefix = _replay(request, h11conn.trailing_data[0])
                    await self.upgrade_handler(request, PrefixedStream(prefix, stream))
                    return True
                conn.enter(_Phase.BUSY)
                try:
                    response = await self.handler(request)
                except Exception:
                    self.log.exception("HTTP handler failed for %s %s", request.method, request.path)
                    response = Response(500, (("content-type", "text/plain"),), b"internal server error")
            finally:
                budget.release()
            await self._send_response(h11conn, stream, response)
            if h11conn.our_state is h11.MUST_CLOSE or h11conn.their_state is h11.MUST_CLOSE:
                return False
            try:
                h11conn.start_next_cycle()
            except h11.LocalProtocolError:
                return False

    async def _read_request(
        self, h11conn: h11.Connection, stream: trio.SocketStream, conn: _Conn, peer: str, budget: _Budget
    ) -> Request | Response | None:
        limits = self.limits
        request: h11.Request | None = None
        body: list[bytes] = []
        size = 0
        conn.enter(_Phase.IDLE)
        # Waiting for the first byte of a request is "idle"; the rest must be quick.
        deadline = body_deadline = trio.current_time() + limits.idle_timeout
        started = False
        while True:
            try:
                event = h11conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _Drop(f"bad request: {exc}", exc.error_status_hint) from None
            if event is h11.NEED_DATA:
                with trio.move_on_at(deadline) as scope:
                    data = await stream.receive_some(65536)
                if scope.cancelled_caught:
                    raise _Drop("timed out", 408 if started else None)
                if not data and h11conn.their_state is h11.IDLE:
                    return None
                h11conn.receive_data(data)
                if not started and data:
                    started = True
                    conn.enter(_Phase.HEAD)
                    now = trio.current_time()
                    deadline = now + limits.header_timeout
                    body_deadline = now + limits.request_timeout
                continue
            if isinstance(event, h11.Request):
                request = event
                conn.enter(_Phase.BODY)
                deadline = body_deadline
                if self.precheck is not None:
                    early = self.precheck(_request(event, b"", peer))
                    if early is not None:
                        return early
                declared = _content_length(event.headers)
                if declared is not None and declared > limits.max_body_bytes:
                    raise _Drop(f"body of {declared} bytes exceeds the limit of {limits.max_body_bytes}", 413)
                if declared and not budget.reserve(declared):
                    raise _Drop("server busy: too many request bytes buffered; retry later", 503)
                continue
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limits.max_body_bytes:
                    raise _Drop(f"body exceeds the limit of {limits.max_body_bytes} bytes", 413)
                if size > budget.reserved and not budget.reserve(size - budget.reserved):
                    raise _Drop("server busy: too many request bytes buffered; retry later", 503)
                body.append(bytes(event.data))
                continue
            if isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                assert request is not None
                return _request(request, b"".join(body), peer)
            if isinstance(event, h11.ConnectionClosed):
                return None

    async def _send_response(
        self, conn: h11.Connection, stream: trio.SocketStream, response: Response, *, close: bool = False
    ) -> None:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        headers.append((b"content-length", str(len(response.body)).encode()))
        headers.append((b"server", self._server_header))
        if close:
            headers.append((b"connection", b"close"))
        data = conn.send(h11.Response(status_code=response.status, headers=headers))
        data += conn.send(h11.Data(data=response.body)) if response.body else b""
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)

    async def _send_simple(self, conn: h11.Connection, stream: trio.SocketStream, status: int, text: str) -> None:
        response = Response(status, (("content-type", "text/plain; charset=utf-8"),), text.encode("utf-8"))
        try:
            await self._send_response(conn, stream, response, close=True)
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class _Budget:
    """One request's share of ``max_buffered_bytes``; released when the request is done."""

    __slots__ = ("reserved", "server")

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.reserved = 0

    def reserve(self, n: int) -> bool:
        server = self.server
        cap = server.limits.max_buffered_bytes
        if cap and server.buffered + n > cap:
            return False
        server.buffered += n
        self.reserved += n
        return True

    def release(self) -> None:
        self.server.buffered -= self.reserved
        self.reserved = 0


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _request(event: h11.Request, body: bytes, peer: str) -> Request:
    target = event.target.decode("latin-1")
    path, _, query = target.partition("?")
    headers = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers)
    return Request(event.method.decode("ascii", "replace"), target, path, query, headers, body, peer)


def _replay(request: Request, trailing: bytes) -> bytes:
    lines = [f"{request.method} {request.target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in request.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + bytes(trailing)


def _peer_host(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except (OSError, ValueError, TypeError, IndexError):
        return "?"


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port, *_ = stream.socket.getpeername()
        return f"{host}:{port}"
    except (OSError, ValueError, TypeError):
        return "?"
