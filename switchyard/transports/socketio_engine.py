"""Engine.IO 4 server on Trio: long-polling over :mod:`http_server`, WebSocket over :mod:`websocket_server`.

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
  one that answers no ping within ``ping_timeout``. Over WebSocket, what arrives while
  nothing is queued and no handler is busy is handled in the reader's own task (no
  queue, no task switch); while a handler is busy the reader queues, so the bound holds;
* WebSocket frames are read and written with wsproto (:mod:`websocket_server`): a
  message over ``max_payload`` closes the connection with 1009, bad frames with
  1002/1007, each logged as one rate-limited line;
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

from switchyard.protocols import engineio as eio
from switchyard.protocols.engineio import Packet, PacketType, ServerSession, SessionState, Transport
from switchyard.runtime.inline import Blocked, first_step, resume
from switchyard.runtime.ratelog import RateLimitedLog
from switchyard.transports.http_server import Request, Response
from switchyard.transports.socketio_engine_socket import EngineSocket, SessionEnded
from switchyard.transports.websocket_server import PendingWebSocket, WebSocketClosed, WebSocketConnection, handshake

__all__ = ["DEFAULT_ORIGINS", "EngineConfig", "EngineServer", "EngineSocket", "SessionEnded", "origin_allowed"]

SessionHandler = Callable[[EngineSocket], Awaitable[None]]

log = logging.getLogger("switchyard.transports.engineio")

#: While handlers mostly block, each queued batch decays the blocking average by this
#: factor, so inline dispatch is tried again after a while.
_BLOCKING_DECAY = 0.98


class _BlockingAverage:
    """How often inline handlers blocked on their first step (moving average, 0..1)."""

    __slots__ = ("blocking",)
    WEIGHT = 0.1

    def __init__(self) -> None:
        self.blocking = 0.0

    def record(self, blocked: bool) -> None:
        self.blocking += self.WEIGHT * ((1.0 if blocked else 0.0) - self.blocking)

    @property
    def mostly_blocks(self) -> bool:
        return self.blocking > 0.5


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
        try:
            with trio.fail_after(self.config.ping_timeout):
                pending = await handshake(stream, max_message_size=self.config.max_payload)
        except (WebSocketClosed, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.bad_input("websocket handshake from %s failed: %s", request.client, str(exc) or type(exc).__name__)
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        ws: WebSocketConnection | None = None
        try:
            ws = await self._serve_websocket(request, pending)
        finally:
            with trio.CancelScope(shield=True):
                if ws is not None:
                    await ws.aclose()
                else:
                    await stream.aclose()

    async def _serve_websocket(self, request: Request, pending: PendingWebSocket) -> WebSocketConnection | None:
        """Answer the handshake and serve the session; the connection, if accepted."""
        json_type = ((b"content-type", b"application/json"),)
        _cors, allowed = self._cors(request)
        if request.path.rstrip("/") + "/" != self.config.path:
            await pending.reject(404)
            return None
        if not allowed:
            self.bad_input("websocket from origin %r refused", request.header("origin"))
            await pending.reject(403, json_type, eio.error_body(eio.ErrorCode.FORBIDDEN))
            return None
        try:
            target = eio.parse_request(request.query)
            if target.transport is not Transport.WEBSOCKET or not self.config.allow_websocket:
                raise eio.EngineIOError("websocket transport not served", eio.ErrorCode.UNKNOWN_TRANSPORT)
        except eio.EngineIOError as exc:
            self.bad_input("websocket refused: %s", exc)
            await pending.reject(400, json_type, eio.error_body(exc.code, str(exc)))
            return None
        if target.sid is None:
            sock = self._new_socket(Transport.WEBSOCKET, request)
            if sock is None:
                await pending.reject(503, json_type, eio.error_body(eio.ErrorCode.BAD_REQUEST, "session limit reached"))
                return None
            try:
                ws = await pending.accept()
                await ws.send_message(eio.encode_packet(sock.session.handshake().to_packet()))
            except WebSocketClosed:
                sock.abort("transport close")
                return None
            await self._websocket_session(sock, ws)
            return ws
        sock = self.sessions.get(target.sid)
        if sock is None:
            await pending.reject(400, json_type, eio.error_body(eio.ErrorCode.UNKNOWN_SID))
            return None
        ws = await pending.accept()
        if await self._upgrade(sock, ws):
            await self._websocket_session(sock, ws)
        return ws

    async def _upgrade(self, sock: EngineSocket, ws: WebSocketConnection) -> bool:
        try:
            with trio.fail_after(self.config.ping_timeout):
                messages = await ws.receive_messages()
                # The answer also releases a pending poll (NOOP) so the client can pause polling.
                await ws.send_message(eio.encode_packet(sock.probe(eio.decode_packet(messages[0]))))
                if len(messages) < 2:
                    messages += await ws.receive_messages()
                sock.upgrade(eio.decode_packet(messages[1]))
                if len(messages) > 2:
                    sock.feed([eio.decode_packet(m) for m in messages[2:]])
        except (eio.EngineIOError, trio.TooSlowError, WebSocketClosed) as exc:
            sock.cancel_upgrade()
            self.bad_input(
                "engine.io session %s: websocket upgrade failed: %s", sock.sid, str(exc) or type(exc).__name__
            )
            return False
        self.log.debug("engine.io session %s upgraded to websocket", sock.sid)
        return True

    async def _websocket_session(self, sock: EngineSocket, ws: WebSocketConnection) -> None:
        sock.attach_websocket(ws.send_messages)
        reading_done = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                writer_scope = trio.CancelScope()
                nursery.start_soon(self._ws_writer, sock, ws, writer_scope)
                nursery.start_soon(self._ws_reader, sock, ws, nursery, reading_done, _BlockingAverage())
                await reading_done.wait()
                writer_scope.cancel()
                # a handler still running in a reader task ends by itself (its ack is dropped)
        finally:
            sock.detach_websocket()

    async def _ws_reader(
        self,
        sock: EngineSocket,
        ws: WebSocketConnection,
        nursery: trio.Nursery,
        reading_done: trio.Event,
        inline: _BlockingAverage,
    ) -> None:
        """Read frames, and handle what arrives inline when the session allows it.

        When an inline handler blocks, a fresh reader takes over reading and this task
        finishes the handler (so its cancel scopes stay in the task that entered them).
        """
        try:
            while sock.state is not SessionState.CLOSED:
                try:
                    messages = await ws.receive_messages()
                except WebSocketClosed as exc:
                    if exc.code in (1002, 1007, 1009):
                        self.bad_input(
                            "engine.io session %s (%s): websocket closed for bad input: %s %s",
                            sock.sid,
                            sock.request.client,
                            exc.code,
                            exc.reason,
                        )
                    sock.abort("message larger than max_payload" if exc.code == 1009 else "transport close")
                    return
                try:
                    packets = [eio.decode_packet(m) for m in messages]
                except eio.EngineIOError as exc:
                    self.bad_input("engine.io session %s (%s): bad frame: %s", sock.sid, sock.request.client, exc)
                    sock.abort("parse error")
                    return
                if sock.dispatcher is None or inline.mostly_blocks:
                    inline.blocking *= _BLOCKING_DECAY
                    sock.feed(packets)
                    continue
                batch = sock.feed_inline(packets)
                if batch and not await self._dispatch_inline(sock, ws, batch, nursery, reading_done, inline):
                    return  # another reader task reads now
        finally:
            if sock.state is SessionState.CLOSED:
                reading_done.set()

    async def _dispatch_inline(
        self,
        sock: EngineSocket,
        ws: WebSocketConnection,
        batch: list[str | bytes],
        nursery: trio.Nursery,
        reading_done: trio.Event,
        inline: _BlockingAverage,
    ) -> bool:
        """Handle ``batch`` in this task and flush; False if reading was handed off."""
        assert sock.dispatcher is not None
        handle, flush = sock.dispatcher
        still_reading = True
        try:
            step = first_step(handle(batch))
            inline.record(isinstance(step, Blocked))
            if isinstance(step, Blocked):
                nursery.start_soon(self._ws_reader, sock, ws, nursery, reading_done, inline)
                still_reading = False
                await resume(step)
        except Exception:
            self.log.exception("inline handler for session %s failed", sock.sid)
            sock.abort("handler failed")
        finally:
            sock.batch_done()
        try:
            await flush()
        except SessionEnded:
            pass
        return still_reading

    async def _ws_writer(self, sock: EngineSocket, ws: WebSocketConnection, scope: trio.CancelScope) -> None:
        """Writes what nobody flushed directly (pings, the CLOSE packet, packets queued
        before the upgrade) and closes the connection once the session is closed (which
        also ends a read in progress)."""
        with scope:
            try:
                while True:
                    await sock.flush_websocket()
                    if sock.state is SessionState.CLOSED:
                        break
                    await sock.wait_for_writes()
            except SessionEnded:
                pass
            await ws.aclose()

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
