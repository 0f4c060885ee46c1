"""Engine.IO 4 server on Trio: long-polling over :mod:`http_server`, WebSocket over trio-websocket.

:class:`EngineServer` turns HTTP requests and WebSocket connections into
:class:`EngineSocket` sessions and runs ``session_handler(socket)`` for each, in its
own nursery: the handler reads messages with ``await socket.receive()`` (or ``async
for``) and writes with ``await socket.send(...)``; it returns when the session ends.
The protocol rules live in :mod:`switchyard.protocols.engineio`; this module moves
bytes, runs the heartbeat and enforces limits:

* ``max_payload`` bounds a POST body and a WebSocket message (it is the ``maxPayload``
  the client is told); bigger input closes the session;
* at most ``max_sessions`` sessions exist at once (the next handshake gets HTTP 503);
* a session whose inbound queue (``max_queued_messages``) overflows is closed, as is
  one that answers no ping within ``ping_timeout``;
* ``send`` waits while ``max_pending_out`` packets are queued for the client, so a slow
  client pushes back on whoever emits to it;
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
from switchyard.transports.http_server import Request, Response

__all__ = ["EngineConfig", "EngineServer", "EngineSocket", "SessionEnded", "held", "origin_allowed"]

log = logging.getLogger("switchyard.transports.engineio")

DEFAULT_ORIGINS = (
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
)


@attrs.frozen
class EngineConfig:
    path: str = "/socket.io/"
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_payload: int = 100 * 1024 * 1024
    cors_allowed_origins: tuple[str, ...] = DEFAULT_ORIGINS
    allow_websocket: bool = True
    allow_polling: bool = True
    max_sessions: int = 64
    max_queued_messages: int = 1024
    max_pending_out: int = 1024
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


class SessionEnded(Exception):
    """The session is closed; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EngineSocket:
    """The Trio side of one Engine.IO session (see the module docstring)."""

    def __init__(self, session: ServerSession, config: EngineConfig, request: Request) -> None:
        self.session = session
        self.config = config
        #: The HTTP request that opened the session (headers, client address).
        self.request = request
        self._inbound_send, self._inbound = trio.open_memory_channel[str | bytes](config.max_queued_messages)
        self._changed = trio.Event()
        self._waiters = 0
        # WebSocket mode: frames are written by whoever queues them (no extra task hop)
        self._ws_send: Callable[[list[str | bytes]], Awaitable[None]] | None = None
        self._write_lock = trio.Lock()
        self._writer_kick = trio.Event()
        self.closed = trio.Event()
        self.close_reason: str | None = None

    @property
    def sid(self) -> str:
        return self.session.sid

    @property
    def transport(self) -> str:
        return self.session.transport.value

    # -- for the session handler ----------------------------------------------------
    async def receive(self) -> str | bytes:
        """The next message from the client; raises :class:`SessionEnded` once closed."""
        try:
            return await self._inbound.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise SessionEnded(self.close_reason or "closed") from None

    def receive_nowait(self) -> str | bytes:
        """A message already received, or ``trio.WouldBlock``; :class:`SessionEnded` once closed."""
        try:
            return self._inbound.receive_nowait()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise SessionEnded(self.close_reason or "closed") from None

    def __aiter__(self) -> EngineSocket:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.receive()
        except SessionEnded:
            raise StopAsyncIteration from None

    async def send(self, data: str | bytes) -> None:
        await self.send_many((data,))

    async def send_many(self, items: tuple[str | bytes, ...] | list[str | bytes]) -> None:
        """Queue messages for the client, in order; waits while too many are queued.

        Raises :class:`SessionEnded` if the session is (or becomes) closed.
        """
        session = self.session
        while session.pending >= self.config.max_pending_out and session.state is SessionState.OPEN:
            await self._wait_changed()
        if session.state is not SessionState.OPEN:
            raise SessionEnded(self.close_reason or "closed")
        session.send_many(items)
        if self._ws_send is not None:
            await self._flush_ws()
        else:
            self._notify()

    def close(self, reason: str = "server close") -> None:
        """Close the session: queued messages and a CLOSE packet still go out."""
        self._deliver(self.session.close(reason))
        self._notify()

    # -- internals ------------------------------------------------------------------
    def _notify(self) -> None:
        """Something changed: wake waiting polls / senders, and the WebSocket writer."""
        if self._waiters:
            self._changed.set()
            self._changed = trio.Event()
        session = self.session
        if self._ws_send is not None and (session.pending or session.state is not SessionState.OPEN):
            self._writer_kick.set()

    async def _wait_changed(self) -> None:
        self._waiters += 1
        try:
            await self._changed.wait()
        finally:
            self._waiters -= 1

    async def _flush_ws(self) -> None:
        """Write everything queued to the WebSocket, as one batch (one syscall)."""
        send = self._ws_send
        if send is None or not self.session.has_outgoing(Transport.WEBSOCKET):
            return
        async with held(self._write_lock):
            packets = self.session.take_outgoing(Transport.WEBSOCKET)
            if not packets:
                return
            if self._waiters:
                self._changed.set()
                self._changed = trio.Event()
            try:
                await send([eio.encode_packet(p) for p in packets])
            except (trio_websocket.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                self._abort("transport close")
                raise SessionEnded(self.close_reason or "transport close") from None
            if self.session.state is SessionState.CLOSED:
                self._writer_kick.set()  # the CLOSE packet went out: the writer closes the socket

    def _deliver(self, events: list[eio.SessionEvent]) -> None:
        for event in events:
            if isinstance(event, eio.MessageReceived):
                try:
                    self._inbound_send.send_nowait(event.data)
                except trio.WouldBlock:
                    self._deliver(
                        self.session.abort(
                            f"client sent more than {self.config.max_queued_messages} unprocessed messages"
                        )
                    )
                    return
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    return
            else:
                self._ended(event.reason)

    def _ended(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        self._inbound_send.close()
        self.closed.set()
        self._notify()

    def _receive_packets(self, packets: list[Packet]) -> None:
        try:
            events = self.session.receive_messages(packets, now=trio.current_time())
        except eio.SessionClosingError as exc:
            events = exc.events
        self._deliver(events)
        self._notify()

    def _abort(self, reason: str) -> None:
        self._deliver(self.session.abort(reason))
        self._notify()


SessionHandler = Callable[[EngineSocket], Awaitable[None]]


class EngineServer:
    """Engine.IO sessions for an :class:`~switchyard.transports.http_server.HttpServer`.

    Plug :meth:`handle_http` and :meth:`handle_upgrade` into the HTTP server and run
    :meth:`run` (``await nursery.start(engine.run)``) to own the session tasks.
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
        self.sessions: dict[str, EngineSocket] = {}
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
                    sock._abort("server shutting down")

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
            self.log.info("engine.io request refused: %s (%s)", eio.ErrorCode(code).name, detail)
        headers = (("content-type", "application/json"), *cors)
        return Response(status, headers, eio.error_body(code, detail))

    async def handle_http(self, request: Request) -> Response:
        """Answer one polling request (or 404 if it is not for our path)."""
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
            return await self._open_polling(request, cors)
        sock = self.sessions.get(target.sid)
        if sock is None:
            return self._error(eio.ErrorCode.UNKNOWN_SID, cors, None)
        if request.method == "GET":
            return await self._poll(sock, cors)
        if request.method == "POST":
            return self._post(sock, request, cors)
        return self._error(eio.ErrorCode.BAD_REQUEST, cors, f"method {request.method}")

    def _new_socket(self, transport: Transport, request: Request) -> EngineSocket | None:
        if len(self.sessions) >= self.config.max_sessions or self._nursery is None:
            return None
        cfg = self.config
        upgrades = (Transport.WEBSOCKET,) if cfg.allow_websocket else ()
        session = ServerSession(
            secrets.token_urlsafe(15),
            transport,
            now=trio.current_time(),
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout,
            max_payload=cfg.max_payload,
            upgrades=upgrades,
        )
        sock = EngineSocket(session, cfg, request)
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
        session = sock.session
        try:
            session.begin_poll()
        except eio.SessionClosingError as exc:
            sock._deliver(exc.events)
            sock._notify()
            return self._error(exc.code, cors, str(exc))
        except eio.EngineIOError as exc:
            return self._error(exc.code, cors, str(exc))
        try:
            # Bounded: a live client pongs (through POST) or a ping goes out first.
            with trio.move_on_after(self.config.ping_interval + self.config.ping_timeout):
                while not session.has_outgoing(Transport.POLLING) and session.state is SessionState.OPEN:
                    await sock._wait_changed()
            if session.state is SessionState.CLOSED and not session.has_outgoing(Transport.POLLING):
                return self._error(eio.ErrorCode.BAD_REQUEST, cors, "session closed")
            packets = session.take_outgoing(Transport.POLLING) or [Packet(PacketType.NOOP)]
            sock._notify()
            return self._text(eio.encode_payload(packets), cors)
        finally:
            session.end_poll()

    def _post(self, sock: EngineSocket, request: Request, cors: tuple[tuple[str, str], ...]) -> Response:
        if len(request.body) > self.config.max_payload:
            sock._abort("payload too large")
            return self._error(eio.ErrorCode.BAD_REQUEST, cors, "payload too large", 413)
        if sock.session.transport is not Transport.POLLING:
            return self._error(eio.ErrorCode.BAD_REQUEST, cors, "session was upgraded")
        try:
            packets = eio.decode_payload(request.body, max_packets=self.config.max_packets_per_post)
        except eio.EngineIOError as exc:
            self.log.warning("engine.io session %s: bad POST payload: %s", sock.sid, exc)
            sock._abort("parse error")
            return self._error(exc.code, cors, str(exc))
        sock._receive_packets(packets)
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
            self.log.info("websocket from origin %r refused", request.header("origin"))
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
        session = sock.session
        try:
            with trio.fail_after(self.config.ping_timeout):
                probe = eio.decode_packet(await ws.get_message())
                await ws.send_message(eio.encode_packet(session.receive_probe(probe)))
                sock._notify()  # a pending poll returns NOOP so the client can pause polling
                session.receive_upgrade(eio.decode_packet(await ws.get_message()))
        except (eio.EngineIOError, trio.TooSlowError, trio_websocket.ConnectionClosed) as exc:
            session.cancel_upgrade()
            sock._notify()
            self.log.info(
                "engine.io session %s: websocket upgrade failed: %s", sock.sid, str(exc) or type(exc).__name__
            )
            return False
        self.log.debug("engine.io session %s upgraded to websocket", sock.sid)
        sock._notify()
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

        sock._ws_send = send
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ws_writer, sock, ws)
                await self._ws_reader(sock, ws)
                nursery.cancel_scope.cancel()
        finally:
            sock._ws_send = None
        await _close_websocket(ws)

    async def _ws_reader(self, sock: EngineSocket, ws: trio_websocket.WebSocketConnection) -> None:
        session = sock.session
        while session.state is not SessionState.CLOSED:
            try:
                message = await ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                reason = exc.reason
                too_big = reason is not None and reason.code == 1009
                sock._abort("message larger than max_payload" if too_big else "transport close")
                return
            try:
                packet = eio.decode_packet(message)
            except eio.EngineIOError as exc:
                self.log.warning("engine.io session %s: bad frame: %s", sock.sid, exc)
                sock._abort("parse error")
                return
            sock._receive_packets([packet])

    async def _ws_writer(self, sock: EngineSocket, ws: trio_websocket.WebSocketConnection) -> None:
        """Writes what nobody flushed directly (pings, the CLOSE packet, packets queued
        before the upgrade) and closes the socket once the session is closed."""
        try:
            while True:
                await sock._flush_ws()
                if sock.session.state is SessionState.CLOSED:
                    break
                await sock._writer_kick.wait()
                sock._writer_kick = trio.Event()
        except SessionEnded:
            return
        await _close_websocket(ws)

    # -- session lifetime -----------------------------------------------------------
    async def _run_session(self, sock: EngineSocket) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat, sock)
                await self._run_handler(sock)
                # Let a closing session hand its CLOSE packet to a transport, briefly.
                with trio.move_on_after(self.config.ping_timeout):
                    while sock.session.state is SessionState.CLOSING:
                        await sock._wait_changed()
                nursery.cancel_scope.cancel()
        finally:
            if sock.session.state is not SessionState.CLOSED:
                sock._abort("server shutting down")
            self.sessions.pop(sock.sid, None)
            self.log.debug("engine.io session %s ended: %s", sock.sid, sock.close_reason)

    async def _run_handler(self, sock: EngineSocket) -> None:
        try:
            await self.session_handler(sock)
        except Exception:
            self.log.exception("session handler for %s failed", sock.sid)
        if sock.session.state is SessionState.OPEN:
            sock.close("handler finished")

    async def _heartbeat(self, sock: EngineSocket) -> None:
        session = sock.session
        while session.state is SessionState.OPEN:
            await trio.sleep_until(session.next_deadline())
            events = session.tick(trio.current_time())
            sock._deliver(events)
            sock._notify()


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

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


class held:
    """Hold a ``trio.Lock``; when it is free, take it without a trip through the scheduler.

    ``async with lock`` always checkpoints; on the per-message paths here that is one
    more scheduler round per message for a lock that is almost never contended.
    """

    __slots__ = ("_lock",)

    def __init__(self, lock: trio.Lock) -> None:
        self._lock = lock

    async def __aenter__(self) -> None:
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()
