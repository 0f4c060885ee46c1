"""Engine.IO 4 server on Trio: long-polling over :mod:`http_server`, WebSocket over trio-websocket.

:class:`EngineServer` turns HTTP requests and WebSocket connections into
:class:`EngineSocket` sessions and runs ``session_handler(socket)`` for each, in its
own nursery: the handler reads messages with ``await socket.receive()`` (or ``async
for``) and writes with ``await socket.send(...)``; it returns when the session ends.
The protocol rules live in :mod:`switchyard.protocols.engineio`; this module moves
bytes, runs the heartbeat and enforces limits:

* ``max_payload`` bounds a POST body and a WebSocket message (it is the ``maxPayload``
  the client is told); bigger input closes the session;
* at most ``max_sessions`` sessions exist at once; a handshake past it closes the
  oldest session that is not yet established (never joined a namespace), and only
  when every session is established gets HTTP 503;
* a session whose inbound queue (``max_queued_messages``) overflows is closed, as is
  one that answers no ping within ``ping_timeout``;
* ``send`` waits while ``max_pending_out`` packets are queued for the client, so a slow
  client pushes back on whoever emits to it; a client that reads nothing for
  ``send_timeout`` seconds is dropped (see :mod:`socketio_engine_socket`);
* requests whose head already shows they are refused (path, origin, query, sid,
  method) are answered by :meth:`EngineServer.check_http` before their body is read;
* every refused request and bad frame is logged as one rate-limited line;
* CORS: requests from a browser ``Origin`` not in ``cors_allowed_origins`` get 403 (a
  WebSocket handshake too); allowed ones get the CORS headers. Entries are exact
  origins, ``*`` (any), or ``scheme://host:*`` (any port). Requests without an
  ``Origin`` header (non-browser clients) are not restricted by CORS.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable

import attrs
import trio
import trio_websocket

from switchyard.protocols import engineio as eio
from switchyard.protocols.engineio import Packet, PacketType, ServerSession, SessionState, Transport
from switchyard.runtime.ratelog import RateLimitedLog
from switchyard.transports.http_server import Request, Response
from switchyard.transports.socketio_engine_socket import EngineSocket, SessionEnded, held

__all__ = ["DEFAULT_ORIGINS", "EngineConfig", "EngineServer", "EngineSocket", "SessionEnded", "held", "origin_allowed"]

SessionHandler = Callable[[EngineSocket], Awaitable[None]]

log = logging.getLogger("switchyard.transports.engineio")

DEFAULT_ORIGINS = (
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://[::1]:*",
)


def _slash(path: str) -> str:
    return path if path.endswith("/") else path + "/"


@attrs.frozen
class EngineConfig:
    """Engine.IO limits and options (see the module docstring for what each bounds)."""

    path: str = attrs.field(default="/socket.io/", converter=_slash)
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_payload: int = 100 * 1024 * 1024
    cors_allowed_origins: tuple[str, ...] = DEFAULT_ORIGINS
    allow_websocket: bool = True
    allow_polling: bool = True
    max_sessions: int = 64
    max_queued_messages: int = 1024
    max_pending_out: int = 1024
    send_timeout: float = 10.0
    max_packets_per_post: int = 10_000


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    """Whether browser ``origin`` matches an entry of ``allowed`` (see module doc)."""
    origin = origin.rstrip("/").lower()
    for entry in allowed:
        entry = entry.rstrip("/").lower()
        if entry == "*" or entry == origin:
            return True
        if entry.endswith(":*"):
            base = entry[:-2]
            if origin == base or (origin.startswith(base + ":") and origin[len(base) + 1 :].isdigit()):
                return True
    return False


class EngineServer:
    """Engine.IO sessions for an :class:`~switchyard.transports.http_server.HttpServer`.

    Plug :meth:`check_http` (as the HTTP server's ``precheck``), :meth:`handle_http`
    and :meth:`handle_upgrade` into the HTTP server and run :meth:`run` (``await
    nursery.start(engine.run)``) to own the session tasks.
    """

    def __init__(
        self,
        session_handler: SessionHandler,
        config: EngineConfig = EngineConfig(),
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        self.session_handler = session_handler
        self.config = config
        self.log = logger or log
        #: One line per refused request or bad frame, rate-limited.
        self.bad_input = RateLimitedLog(self.log, level=logging.INFO, what="refused Engine.IO requests")
        self.sessions: dict[str, EngineSocket] = {}
        #: Sessions closed to make room for a new one (see ``max_sessions``).
        self.shed = 0
        self._nursery: trio.Nursery | None = None
        self._cors_base = (("access-control-allow-credentials", "true"), ("vary", "Origin"))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the session tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None
                for sock in list(self.sessions.values()):
                    sock.abort("server shutting down")

    # -- HTTP ---------------------------------------------------------------------
    def _cors(self, request: Request) -> tuple[tuple[tuple[str, str], ...], bool]:
        origin = request.header("origin")
        if origin is None:
            return (), True
        if not origin_allowed(origin, self.config.cors_allowed_origins):
            return (), False
        return (("access-control-allow-origin", origin), *self._cors_base), True

    def _error(
        self, code: eio.ErrorCode, cors: tuple[tuple[str, str], ...], detail: str | None = None, status: int = 400
    ) -> Response:
        if detail:
            self.bad_input("engine.io request refused: %s (%s)", eio.ErrorCode(code).name, detail)
        headers = (("content-type", "application/json"), *cors)
        return Response(status, headers, eio.error_body(code, detail))

    def _route(self, request: Request) -> Response | tuple[tuple[tuple[str, str], ...], EngineSocket | None]:
        """An error answer, or the CORS headers and the session (None: a handshake)."""
        if request.path.rstrip("/") + "/" != self.config.path:
            return Response(404, (("content-type", "text/plain"),), b"not found")
        cors, allowed = self._cors(request)
        if not allowed:
            return self._error(eio.ErrorCode.FORBIDDEN, (), f"origin {request.header('origin')!r} not allowed", 403)
        if request.method == "OPTIONS":
            headers = (
                *cors,
                ("access-control-allow-methods", "GET, POST, OPTIONS"),
                ("access-control-allow-headers", request.header("access-control-request-headers") or "content-type"),
                ("access-control-max-age", "600"),
            )
            return Response(204, headers)
        try:
            target = eio.parse_request(request.query)
        except eio.EngineIOError as exc:
            return self._error(exc.code, cors, str(exc))
        if target.transport is not Transport.POLLING or not self.config.allow_polling:
            return self._error(eio.ErrorCode.UNKNOWN_TRANSPORT, cors, "transport not served over plain HTTP")
        if target.sid is None:
            if request.method != "GET":
                return self._error(eio.ErrorCode.BAD_HANDSHAKE_METHOD, cors, request.method)
            return cors, None
        sock = self.sessions.get(target.sid)
        if sock is None:
            return self._error(eio.ErrorCode.UNKNOWN_SID, cors, None)
        if request.method not in ("GET", "POST"):
            return self._error(eio.ErrorCode.BAD_REQUEST, cors, f"method {request.method}")
        return cors, sock

    def check_http(self, request: Request) -> Response | None:
        """The answer to a request known from its head alone (wrong path, origin,
        query, sid or method), so its body is never read; None: read it and call
        :meth:`handle_http`."""
        if request.wants_websocket:
            return None
        routed = self._route(request)
        return routed if isinstance(routed, Response) else None

    async def handle_http(self, request: Request) -> Response:
        """Answer one polling request (or 404 if it is not for our path)."""
        routed = self._route(request)
        if isinstance(routed, Response):
            return routed
        cors, sock = routed
        if sock is None:
            return await self._open_polling(request, cors)
        if request.method == "GET":
            return await self._poll(sock, cors)
        return self._post(sock, request, cors)

    def _make_room(self) -> bool:
        """At ``max_sessions``, close the oldest session not yet established."""
        if len(self.sessions) < self.config.max_sessions:
            return True
        for sid, sock in self.sessions.items():
            if not sock.established:
                del self.sessions[sid]
                self.shed += 1
                sock.abort("shed: session limit reached before it joined")
                self.bad_input("engine.io session %s from %s shed to make room", sid, sock.request.client)
                return True
        return False

    def _new_socket(self, transport: Transport, request: Request) -> EngineSocket | None:
        if self._nursery is None or not self._make_room():
            return None
        cfg = self.config
        upgrades = (Transport.WEBSOCKET,) if cfg.allow_websocket else ()
        now = trio.current_time()
        session = ServerSession(
            secrets.token_urlsafe(15),
            transport,
            now=now,
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout,
            max_payload=cfg.max_payload,
            upgrades=upgrades,
        )
        sock = EngineSocket(
            session,
            request,
            max_queued_messages=cfg.max_queued_messages,
            max_pending_out=cfg.max_pending_out,
            send_timeout=cfg.send_timeout,
            opened_at=now,
        )
        self.sessions[sock.sid] = sock
        self._nursery.start_soon(self._run_session, sock)
        return sock

    async def _open_polling(self, request: Request, cors: tuple[tuple[str, str], ...]) -> Response:
        sock = self._new_socket(Transport.POLLING, request)
        if sock is None:
            return self._error(
                eio.ErrorCode.BAD_REQUEST, cors, f"session limit ({self.config.max_sessions}) reached", 503
            )
        self.log.debug("engine.io session %s opened (polling) from %s", sock.sid, request.client)
        body = eio.encode_payload([sock.session.handshake().to_packet()])
        return self._text(body, cors)

    @staticmethod
    def _text(body: str, cors: tuple[tuple[str, str], ...]) -> Response:
        return Response(200, (("content-type", "text/plain; charset=UTF-8"), *cors), body.encode("utf-8"))

    async def _poll(self, sock: EngineSocket, cors: tuple[tuple[str, str], ...]) -> Response:
        try:
            if not sock.begin_poll():
                return self._error(eio.ErrorCode.BAD_REQUEST, cors, sock.close_reason)
        except eio.EngineIOError as exc:
            return self._error(exc.code, cors, str(exc))
        try:
            # Bounded: a live client pongs (through POST) or a ping goes out first.
            with trio.move_on_after(self.config.ping_interval + self.config.ping_timeout):
                while not sock.poll_ready():
                    await sock.wait_changed()
            packets = sock.take_for_poll()
            if not packets and sock.state is SessionState.CLOSED:
                return self._error(eio.ErrorCode.BAD_REQUEST, cors, "session closed")
            return self._text(eio.encode_payload(packets or [Packet(PacketType.NOOP)]), cors)
        finally:
            sock.end_poll()

    def _post(self, sock: EngineSocket, request: Request, cors: tuple[tuple[str, str], ...]) -> Response:
        if len(request.body) > self.config.max_payload:
            sock.abort("payload too large")
            return self._error(eio.ErrorCode.BAD_REQUEST, cors, "payload too large", 413)
        if sock.session.transport is not Transport.POLLING:
            return self._error(eio.ErrorCode.BAD_REQUEST, cors, "session was upgraded")
        try:
            packets = eio.decode_payload(request.body, max_packets=self.config.max_packets_per_post)
        except eio.EngineIOError as exc:
            self.bad_input("engine.io session %s (%s): bad POST payload: %s", sock.sid, request.client, exc)
            sock.abort("parse error")
            return self._error(exc.code, cors)
        sock.feed(packets)
        return Response(200, (("content-type", "text/html"), *cors), b"ok")

    # -- WebSocket ------------------------------------------------------------------
    async def handle_upgrade(self, request: Request, stream: trio.abc.Stream) -> None:
        """Serve a WebSocket handshake on ``stream`` (owns and closes it)."""
        corked = _CorkableStream(stream)
        async with trio.open_nursery() as nursery:
            try:
                ws_request = await trio_websocket.wrap_server_stream(
                    nursery, corked, max_message_size=self.config.max_payload, message_queue_size=64
                )
                await self._serve_websocket(request, ws_request, corked)
            finally:
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    async def _serve_websocket(
        self, request: Request, ws_request: trio_websocket.WebSocketRequest, stream: _CorkableStream
    ) -> None:
        _cors, allowed = self._cors(request)
        if request.path.rstrip("/") + "/" != self.config.path:
            await ws_request.reject(404)
            return
        if not allowed:
            self.bad_input("websocket from origin %r refused", request.header("origin"))
            await ws_request.reject(
                403,
                extra_headers=[(b"content-type", b"application/json")],
                body=eio.error_body(eio.ErrorCode.FORBIDDEN),
            )
            return
        try:
            target = eio.parse_request(request.query)
            if target.transport is not Transport.WEBSOCKET or not self.config.allow_websocket:
                raise eio.EngineIOError("websocket transport not served", eio.ErrorCode.UNKNOWN_TRANSPORT)
        except eio.EngineIOError as exc:
            self.bad_input("websocket refused: %s", exc)
            await ws_request.reject(
                400, extra_headers=[(b"content-type", b"application/json")], body=eio.error_body(exc.code, str(exc))
            )
            return
        if target.sid is None:
            sock = self._new_socket(Transport.WEBSOCKET, request)
            if sock is None:
                await ws_request.reject(503, body=eio.error_body(eio.ErrorCode.BAD_REQUEST, "session limit reached"))
                return
            ws = await ws_request.accept()
            await ws.send_message(eio.encode_packet(sock.session.handshake().to_packet()))
            await self._websocket_session(sock, ws, stream)
            return
        sock = self.sessions.get(target.sid)
        if sock is None:
            await ws_request.reject(400, body=eio.error_body(eio.ErrorCode.UNKNOWN_SID))
            return
        ws = await ws_request.accept()
        if await self._upgrade(sock, ws):
            await self._websocket_session(sock, ws, stream)
        else:
            await _close_websocket(ws)

    async def _upgrade(self, sock: EngineSocket, ws: trio_websocket.WebSocketConnection) -> bool:
        try:
            with trio.fail_after(self.config.ping_timeout):
                probe = eio.decode_packet(await ws.get_message())
                # The answer also releases a pending poll (NOOP) so the client can pause polling.
                await ws.send_message(eio.encode_packet(sock.probe(probe)))
                sock.upgrade(eio.decode_packet(await ws.get_message()))
        except (eio.EngineIOError, trio.TooSlowError, trio_websocket.ConnectionClosed) as exc:
            sock.cancel_upgrade()
            self.bad_input(
                "engine.io session %s: websocket upgrade failed: %s", sock.sid, str(exc) or type(exc).__name__
            )
            return False
        self.log.debug("engine.io session %s upgraded to websocket", sock.sid)
        return True

    async def _websocket_session(
        self, sock: EngineSocket, ws: trio_websocket.WebSocketConnection, stream: _CorkableStream
    ) -> None:
        async def send(frames: list[str | bytes]) -> None:
            stream.cork()  # every frame of the batch goes out in one write
            try:
                for frame in frames:
                    await ws.send_message(frame)
            finally:
                await stream.uncork()

        sock.attach_websocket(send)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ws_writer, sock, ws)
                await self._ws_reader(sock, ws)
                nursery.cancel_scope.cancel()
        finally:
            sock.detach_websocket()
        await _close_websocket(ws)

    async def _ws_reader(self, sock: EngineSocket, ws: trio_websocket.WebSocketConnection) -> None:
        while sock.state is not SessionState.CLOSED:
            try:
                message = await ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                reason = exc.reason
                if reason is not None and reason.code in (1002, 1007, 1009):
                    self.bad_input(
                        "engine.io session %s (%s): websocket closed for bad input: %s %s",
                        sock.sid,
                        sock.request.client,
                        reason.code,
                        reason.reason or reason.name,
                    )
                too_big = reason is not None and reason.code == 1009
                sock.abort("message larger than max_payload" if too_big else "transport close")
                return
            try:
                packet = eio.decode_packet(message)
            except eio.EngineIOError as exc:
                self.bad_input("engine.io session %s (%s): bad frame: %s", sock.sid, sock.request.client, exc)
                sock.abort("parse error")
                return
            sock.feed([packet])

    async def _ws_writer(self, sock: EngineSocket, ws: trio_websocket.WebSocketConnection) -> None:
        """Writes what nobody flushed directly (pings, the CLOSE packet, packets queued
        before the upgrade) and closes the socket once the session is closed."""
        try:
            while True:
                await sock.flush_websocket()
                if sock.state is SessionState.CLOSED:
                    break
                await sock.wait_for_writes()
        except SessionEnded:
            pass
        await _close_websocket(ws)

    # -- session lifetime -----------------------------------------------------------
    async def _run_session(self, sock: EngineSocket) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat, sock)
                await self._run_handler(sock)
                # Let a closing session hand its CLOSE packet to a transport, briefly; a
                # session that never got established does not hold its slot for long.
                linger = self.config.ping_timeout if sock.established else min(1.0, self.config.ping_timeout)
                with trio.move_on_after(linger):
                    while sock.state is SessionState.CLOSING:
                        await sock.wait_changed()
                nursery.cancel_scope.cancel()
        finally:
            if sock.state is not SessionState.CLOSED:
                sock.abort("server shutting down")
            if self.sessions.get(sock.sid) is sock:
                del self.sessions[sock.sid]
            self.log.debug("engine.io session %s ended: %s", sock.sid, sock.close_reason)

    async def _run_handler(self, sock: EngineSocket) -> None:
        try:
            await self.session_handler(sock)
        except Exception:
            self.log.exception("session handler for %s failed", sock.sid)
        if sock.state is SessionState.OPEN:
            sock.close("handler finished")

    async def _heartbeat(self, sock: EngineSocket) -> None:
        while sock.state is SessionState.OPEN:
            await trio.sleep_until(sock.next_deadline())
            sock.tick(trio.current_time())


async def _close_websocket(ws: trio_websocket.WebSocketConnection, timeout: float = 5.0) -> None:
    """Close handshake, bounded: a peer that never answers does not hold us."""
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + timeout
        await ws.aclose()


class _CorkableStream(trio.abc.Stream):
    """Passes everything through, except that ``send_all`` only buffers while corked.

    trio-websocket writes each frame with its own ``send_all``; corking around a batch
    of frames turns N small writes (and N TCP segments) into one.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._corked = False
        self._buffer = bytearray()

    def cork(self) -> None:
        self._corked = True

    async def uncork(self) -> None:
        self._corked = False
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            await self._stream.send_all(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._corked:
            self._buffer += data
            return
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()
