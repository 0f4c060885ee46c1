"""A small HTTP/1.1 server on Trio, built on h11, with WebSocket hand-off.

Engine.IO needs plain HTTP for long-polling and a WebSocket on the same port and
path. This module serves the first and hands the second, untouched, to the caller.

Why h11 rather than a full server (hypercorn, uvicorn, quart-trio):

* it is sans-IO, like our ``protocols/``: the request cycle, keep-alive and framing
  rules are h11's, the sockets, limits and timeouts are ours and explicit;
* it is small, typed and maintained by python-hyper (it also underlies httpcore/httpx
  and is what wsproto, under trio-websocket, parses the upgrade request with), so no
  new dependency is pulled in;
* an ASGI server would put a second application model between the socket and the
  Engine.IO session, and make the WebSocket side its own instead of trio-websocket.

What a caller may rely on:

* ``handler(request) -> Response`` is called once per complete request; the body is
  read in full first and is at most ``limits.max_body_bytes`` (bigger: ``413`` and the
  connection closes, the handler never sees it);
* a ``GET`` carrying ``Upgrade: websocket`` goes to ``upgrade_handler(request, stream)``
  instead; ``stream`` replays the request bytes, so a WebSocket library can parse the
  handshake itself (``trio_websocket.wrap_server_stream``). The handler owns the stream;
* slow or idle peers are dropped after ``limits.request_timeout`` /
  ``limits.idle_timeout``; at most ``limits.max_connections`` connections are served at
  once (further ones wait in the listen backlog);
* a handler exception answers ``500`` and is logged; the server goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import attrs
import h11
import trio

__all__ = ["HttpLimits", "HttpServer", "PrefixedStream", "Request", "Response"]

log = logging.getLogger("switchyard.transports.http")


@attrs.frozen
class HttpLimits:
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 1 << 20
    request_timeout: float = 30.0  # to receive a whole request once it has begun
    idle_timeout: float = 75.0  # keep-alive connection waiting for its next request
    max_connections: int = 256


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


class PrefixedStream(trio.abc.Stream):
    """A stream that first yields ``prefix`` and then reads from ``stream``."""

    def __init__(self, prefix: bytes, stream: trio.abc.Stream) -> None:
        self._prefix = prefix
        self._stream = stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
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
        limits: HttpLimits = HttpLimits(),
        logger: logging.Logger | None = None,
        server_header: str = "switchyard",
    ) -> None:
        self.handler = handler
        self.upgrade_handler = upgrade_handler
        self.limits = limits
        self.log = logger or log
        self._server_header = server_header.encode()
        self._slots = trio.Semaphore(limits.max_connections)
        #: Number of connections being served now.
        self.connections = 0

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
                await self._slots.acquire()
                try:
                    stream = await listener.accept()
                except BaseException:
                    self._slots.release()
                    raise
                nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        handed_off = False
        try:
            peer = _peer(stream)
            handed_off = await self._serve_connection(stream, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            self.log.exception("HTTP connection failed")
        finally:
            self.connections -= 1
            self._slots.release()
            if not handed_off:
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    async def _serve_connection(self, stream: trio.SocketStream, peer: str) -> bool:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        while True:
            try:
                request = await self._read_request(conn, stream, peer)
            except _Drop as drop:
                if drop.status is not None and conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._send_simple(conn, stream, drop.status, str(drop))
                return False
            if request is None:
                return False
            if request.wants_websocket and self.upgrade_handler is not None:
                prefix = _replay(request, conn.trailing_data[0])
                await self.upgrade_handler(request, PrefixedStream(prefix, stream))
                return True
            try:
                response = await self.handler(request)
            except Exception:
                self.log.exception("HTTP handler failed for %s %s", request.method, request.path)
                response = Response(500, (("content-type", "text/plain"),), b"internal server error")
            await self._send_response(conn, stream, response)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return False
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return False

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream, peer: str) -> Request | None:
        limits = self.limits
        request: h11.Request | None = None
        body: list[bytes] = []
        size = 0
        # Waiting for the first byte of a request is "idle"; the rest must be quick.
        deadline = trio.current_time() + limits.idle_timeout
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _Drop(f"bad request: {exc}", exc.error_status_hint) from None
            if event is h11.NEED_DATA:
                with trio.move_on_at(deadline) as scope:
                    data = await stream.receive_some(65536)
                if scope.cancelled_caught:
                    raise _Drop("timed out", 408 if request is not None else None)
                if not data and conn.their_state is h11.IDLE:
                    return None
                conn.receive_data(data)
                if request is None and data:
                    deadline = min(deadline, trio.current_time() + limits.request_timeout)
                continue
            if isinstance(event, h11.Request):
                request = event
                declared = _content_length(event.headers)
                if declared is not None and declared > limits.max_body_bytes:
                    raise _Drop(f"body of {declared} bytes exceeds the limit of {limits.max_body_bytes}", 413)
                continue
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limits.max_body_bytes:
                    raise _Drop(f"body exceeds the limit of {limits.max_body_bytes} bytes", 413)
                body.append(bytes(event.data))
                continue
            if isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                assert request is not None
                return _request(request, b"".join(body), peer)
            if isinstance(event, h11.ConnectionClosed):
                return None

    async def _send_response(self, conn: h11.Connection, stream: trio.SocketStream, response: Response) -> None:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        headers.append((b"content-length", str(len(response.body)).encode()))
        headers.append((b"server", self._server_header))
        data = conn.send(h11.Response(status_code=response.status, headers=headers))
        data += conn.send(h11.Data(data=response.body)) if response.body else b""
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)

    async def _send_simple(self, conn: h11.Connection, stream: trio.SocketStream, status: int, text: str) -> None:
        self.log.info("HTTP %d: %s", status, text)
        response = Response(
            status, (("content-type", "text/plain; charset=utf-8"), ("connection", "close")), text.encode("utf-8")
        )
        try:
            await self._send_response(conn, stream, response)
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
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


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port, *_ = stream.socket.getpeername()
        return f"{host}:{port}"
    except (OSError, ValueError, TypeError):
        return "?"
