"""Socket.IO 5 server on Trio: namespaces, events, acknowledgements, binary, auth.

``SocketIOServer(handler, config)`` listens on one port for both Engine.IO transports
(:mod:`socketio_engine`) and drives a :class:`~switchyard.protocols.socketio.ServerConnection`
per session. The application is a :class:`SocketIOHandler`:

* ``on_connect(client, auth)`` for each namespace CONNECT; raise :class:`ConnectRefused`
  to answer the client's ``connect_error`` with your message. Before it is called the
  server itself refuses a wrong/missing ``auth_token`` (presented as the CONNECT
  ``auth`` payload ``{"token": ...}``, socket.io-client's ``auth`` option, or as a
  ``token`` query parameter) and, when ``max_clients`` clients are connected, any
  further one ("only one client at a time" by default);
* ``on_event(client, name, args)`` returns the acknowledgement arguments (a list, or
  one value; ``None`` means none) which are sent if the client asked for an ack. The
  events of one client are handled one at a time, in the order they were sent;
* ``on_event`` may instead return a :class:`PendingAck`: the work was started (e.g. a
  request posted to an actor) and ``wait()`` gives the ack arguments later. The server
  then goes on with the client's next event; ``wait()`` runs in the session's ack
  task, after every earlier event was answered, so acks still go out in event order
  (an event answered at once waits behind pending ones). At most
  ``max_pending_acks`` events of a session wait for their ack; the next one waits for
  room (backpressure). When the session ends first, ``abandon()`` is called for each
  pending ack whose ``wait()`` has not returned;
* ``on_disconnect(client, reason)`` once per connected client, whatever ended it.

``client.emit(name, *args)`` sends to a client from any task; it waits while the
client has ``max_pending_out`` packets queued (backpressure), and a client that reads
nothing for the engine's ``send_timeout`` is dropped.

Protected mode: bound to a non-loopback ``host`` without an ``auth_token`` the config
is refused unless ``allow_anonymous`` is true. A session that joins no namespace
within ``connect_timeout`` is closed, and such sessions are the first shed when the
engine's ``max_sessions`` is reached.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qs

import attrs
import trio

from switchyard.protocols import socketio as sio
from switchyard.runtime.ratelog import RateLimitedLog
from switchyard.transports.http_server import HttpLimits, HttpServer
from switchyard.transports.socketio_engine import EngineConfig, EngineServer, EngineSocket, SessionEnded
from switchyard.transports.websocket_server import FastLock

__all__ = [
    "ConnectRefused",
    "PendingAck",
    "SocketIOClient",
    "SocketIOConfig",
    "SocketIOHandler",
    "SocketIOServer",
    "is_loopback",
]

log = logging.getLogger("switchyard.transports.socketio")

_BATCH = 64  # messages handled between two flushes at most


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable only from this machine."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@attrs.frozen
class SocketIOConfig:
    """Server options. ``auth_token`` is never shown in the repr (nor logged)."""

    host: str = "127.0.0.1"
    port: int = 8000
    engine: EngineConfig = EngineConfig()
    namespaces: tuple[str, ...] = (sio.DEFAULT_NAMESPACE,)
    max_clients: int = 1  # 0: no limit
    auth_token: str | None = attrs.field(default=None, repr=False)  # when set, clients must present it
    allow_anonymous: bool = False  # serve a non-loopback host without a token
    connect_timeout: float = 10.0  # a session that joins no namespace by then is closed
    max_attachments: int = 16
    disconnect_timeout: float = 10.0  # bound on on_disconnect once the session is gone
    max_pending_acks: int = 64  # events of a session waiting for a PendingAck's answer
    http: HttpLimits | None = None  # default: HttpLimits() with body limit = max_payload

    def __attrs_post_init__(self) -> None:
        if not self.auth_token and not self.allow_anonymous and not is_loopback(self.host):
            raise ValueError(
                f"refusing to serve Socket.IO on non-loopback host {self.host!r} without a token: "
                "set auth_token, or allow_anonymous = true"
            )


class ConnectRefused(Exception):
    """Raised by ``on_connect`` to refuse; the client's ``connect_error`` gets ``message``."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class PendingAck:
    """An acknowledgement that comes later (see the module docstring).

    ``wait()`` returns the ack arguments as ``on_event`` would (an exception: logged,
    no ack); it runs in the session's ack task. ``abandon()``, if given, is called
    when the session ends before ``wait()`` returned (also when it never started),
    possibly more than once.
    """

    __slots__ = ("abandon", "wait")

    def __init__(self, wait: Callable[[], Awaitable[Any]], abandon: Callable[[], None] | None = None) -> None:
        self.wait = wait
        self.abandon = abandon


class SocketIOClient:
    """One connected client (one namespace of one session)."""

    def __init__(self, link: _Link, nsp: str, sid: str, auth: Any) -> None:
        self._link = link
        self.nsp = nsp
        self.sid = sid
        self.auth = auth
        self.connected = False

    @property
    def engine_sid(self) -> str:
        return self._link.sock.sid

    @property
    def transport(self) -> str:
        """``"polling"`` or ``"websocket"`` (changes after an upgrade)."""
        return self._link.sock.transport

    @property
    def remote(self) -> str:
        return self._link.sock.request.client

    async def emit(self, event: str, *args: Any) -> None:
        """Send event ``event`` with ``args``; raises :class:`SessionEnded` if gone."""
        if not self.connected:
            raise SessionEnded("client is not connected")
        try:
            self._link.conn.emit(event, args, nsp=self.nsp)
        except sio.SocketIOError as exc:
            raise ValueError(str(exc)) from None
        await self._link.flush()

    async def disconnect(self) -> None:
        """Server-side disconnect of this namespace (the session closes with the last one)."""
        if self.connected:
            self._link.conn.disconnect(self.nsp)
            await self._link.disconnected(self, "server namespace disconnect")
            await self._link.flush()
            if not self._link.conn.connected_namespaces:
                self._link.sock.close("server disconnect")


class SocketIOHandler(Protocol):
    async def on_connect(self, client: SocketIOClient, auth: Any) -> None: ...

    async def on_event(self, client: SocketIOClient, name: str, args: list[Any]) -> Any: ...

    async def on_disconnect(self, client: SocketIOClient, reason: str) -> None: ...


class _Link:
    """Per-session glue: the engine socket, the protocol state and its clients."""

    def __init__(self, server: SocketIOServer, sock: EngineSocket, conn: sio.ServerConnection) -> None:
        self.server = server
        self.sock = sock
        self.conn = conn
        self.clients: dict[str, SocketIOClient] = {}
        self._send_lock = FastLock()
        #: Events waiting for their ack, in order: (client, event, ack args or PendingAck).
        self.acks: deque[tuple[SocketIOClient, sio.EventReceived, Any]] = deque()
        self._acks_changed = trio.Event()
        self._acks_waiters = 0

    def acks_changed(self) -> None:
        """An ack was queued or taken: wake the ack task or a sender waiting for room."""
        if self._acks_waiters:
            self._acks_changed.set()
            self._acks_changed = trio.Event()

    async def wait_acks_changed(self) -> None:
        self._acks_waiters += 1
        try:
            await self._acks_changed.wait()
        finally:
            self._acks_waiters -= 1

    def abandon_acks(self) -> None:
        """The session is over: every pending ack still queued is abandoned."""
        acks, self.acks = self.acks, deque()
        for _client, _event, result in acks:
            if isinstance(result, PendingAck) and result.abandon is not None:
                result.abandon()

    async def flush(self) -> None:
        # The lock keeps packets in protocol order when several tasks emit at once.
        async with self._send_lock:
            frames = self.conn.take_outgoing()
            if frames:
                await self.sock.send_many(frames)

    async def disconnected(self, client: SocketIOClient, reason: str) -> None:
        if not client.connected:
            return
        client.connected = False
        self.clients.pop(client.nsp, None)
        self.server.clients.pop(client.sid, None)
        try:
            await self.server.handler.on_disconnect(client, reason)
        except Exception:
            self.server.log.exception("on_disconnect failed for client %s", client.sid)


class SocketIOServer:
    """See the module docstring. Run with ``port = await nursery.start(server.serve)``."""

    def __init__(
        self,
        handler: SocketIOHandler,
        config: SocketIOConfig = SocketIOConfig(),
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        self.handler = handler
        self.config = config
        self.log = logger or log
        #: Connected clients by Socket.IO sid.
        self.clients: dict[str, SocketIOClient] = {}
        self._reserved = 0
        #: One line per refused client or protocol error, rate-limited.
        self.bad_input = RateLimitedLog(self.log, level=logging.INFO, what="refused Socket.IO clients")
        self.engine = EngineServer(self._session, config.engine, logger=self.log)
        limits = config.http or HttpLimits(max_body_bytes=config.engine.max_payload + 1024)
        self.http = HttpServer(
            self.engine.handle_http,
            upgrade_handler=self.engine.handle_upgrade,
            precheck=self.engine.check_http,
            limits=limits,
            logger=self.log,
        )
        self.port: int | None = None

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; ``started`` gets the bound port."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.engine.run)
            self.port = await nursery.start(self.http.serve, self.config.host, self.config.port)
            self.log.info("Socket.IO listening on http://%s:%d%s", self.config.host, self.port, self.config.engine.path)
            task_status.started(self.port)

    # -- one session ------------------------------------------------------------------
    async def _session(self, sock: EngineSocket) -> None:
        link = _Link(
            self,
            sock,
            sio.ServerConnection(namespaces=self.config.namespaces, max_attachments=self.config.max_attachments),
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._connect_timeout, link)
                nursery.start_soon(self._on_session_closed, link)
                nursery.start_soon(self._ack_loop, link)
                await self._read_loop(link)
                nursery.cancel_scope.cancel()
        finally:
            link.abandon_acks()
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.config.disconnect_timeout
                await self._disconnect_all(link)

    async def _on_session_closed(self, link: _Link) -> None:
        # Disconnect at once, even while an event handler is still busy (its ack is then
        # dropped): the client's slot frees up for a reconnecting client right away.
        await link.sock.closed.wait()
        with trio.CancelScope(shield=True) as scope:  # the read loop may end meanwhile
            scope.deadline = trio.current_time() + self.config.disconnect_timeout
            await self._disconnect_all(link)

    async def _disconnect_all(self, link: _Link) -> None:
        reason = link.sock.close_reason or "transport close"
        link.conn.transport_closed(reason)
        for client in list(link.clients.values()):
            await link.disconnected(client, reason)

    async def _connect_timeout(self, link: _Link) -> None:
        await trio.sleep(self.config.connect_timeout)
        if not link.clients:
            self.bad_input(
                "session %s (%s) joined no namespace within %g s; closing",
                link.sock.sid,
                link.sock.request.client,
                self.config.connect_timeout,
            )
            link.sock.close("connect timeout")

    async def _read_loop(self, link: _Link) -> None:
        """Handle what the engine queued (polling, or while an inline batch blocked).

        Over WebSocket the engine's reader usually handles batches itself, inline
        (``set_dispatcher``); batches are handled one at a time either way.
        """
        sock = link.sock
        sock.set_dispatcher(lambda batch: self._handle_batch(link, batch), link.flush)
        while True:
            try:
                # what has already arrived, answered with one flush
                batch = await sock.receive_batch(_BATCH)
            except SessionEnded:
                return
            try:
                going_on = await self._handle_batch(link, batch)
            finally:
                sock.batch_done()
            if not going_on:
                return
            try:
                await link.flush()
            except SessionEnded:
                return

    async def _handle_batch(self, link: _Link, batch: list[str | bytes]) -> bool:
        """Handle messages in order; False once the session is being closed."""
        sock, conn = link.sock, link.conn
        for message in batch:
            try:
                events = conn.receive(message)
            except sio.SocketIOError as exc:
                self.bad_input("session %s (%s): protocol error, closing: %s", sock.sid, sock.request.client, exc)
                sock.close("parse error")
                return False
            for event in events:
                if isinstance(event, sio.EventReceived):
                    await self._on_event(link, event)
                elif isinstance(event, sio.ConnectRequested):
                    await self._on_connect(link, event)
                elif isinstance(event, sio.ClientDisconnected):
                    client = link.clients.get(event.nsp)
                    if client is not None:
                        await link.disconnected(client, event.reason)
                elif isinstance(event, sio.PacketDropped):
                    self.log.debug("session %s: %s", sock.sid, event.reason)
                else:  # AckReceived: we never ask the client for acks
                    self.log.debug("session %s: unexpected %r", sock.sid, event)
        return True

    async def _on_connect(self, link: _Link, event: sio.ConnectRequested) -> None:
        conn, nsp, cfg = link.conn, event.nsp, self.config
        if cfg.auth_token:
            token = _presented_token(event.auth, link.sock.request.query)
            if token is None or not hmac.compare_digest(token.encode(), cfg.auth_token.encode()):
                self.bad_input("client %s refused: invalid or missing auth token", link.sock.request.client)
                conn.refuse(nsp, "unauthorized: invalid or missing auth token", {"reason": "unauthorized"})
                return
        if cfg.max_clients and len(self.clients) + self._reserved >= cfg.max_clients:
            who = "one client" if cfg.max_clients == 1 else f"{cfg.max_clients} clients"
            message = f"server busy: another client is already connected (only {who} at a time)"
            self.bad_input("client %s refused: %s", link.sock.request.client, message)
            conn.refuse(nsp, message, {"reason": "busy", "max_clients": cfg.max_clients})
            return
        client = SocketIOClient(link, nsp, secrets.token_urlsafe(15), event.auth)
        self._reserved += 1
        try:
            await self.handler.on_connect(client, event.auth)
        except ConnectRefused as refused:
            conn.refuse(nsp, refused.message, refused.data)
            return
        except Exception as exc:
            self.log.exception("on_connect failed")
            conn.refuse(nsp, f"server error: {type(exc).__name__}")
            return
        finally:
            self._reserved -= 1
        conn.accept(nsp, client.sid)
        link.sock.mark_established()
        client.connected = True
        link.clients[nsp] = client
        self.clients[client.sid] = client
        self.log.info("client %s connected from %s over %s", client.sid, client.remote, client.transport)

    async def _on_event(self, link: _Link, event: sio.EventReceived) -> None:
        client = link.clients.get(event.nsp)
        if client is None:
            return
        try:
            result = await self.handler.on_event(client, event.name, event.args)
        except Exception:
            self.log.exception("on_event(%r) failed for client %s", event.name, client.sid)
            return
        if isinstance(result, PendingAck) or (link.acks and event.ack_id is not None):
            # later, or behind acks that come later: the ack task sends it, in order
            acks = link.acks
            while len(acks) >= self.config.max_pending_acks:
                await link.wait_acks_changed()
                acks = link.acks
            acks.append((client, event, result))
            link.acks_changed()
            return
        self._ack(link, client, event, result)

    def _ack(self, link: _Link, client: SocketIOClient, event: sio.EventReceived, result: Any) -> None:
        if event.ack_id is not None and client.connected:
            args = result if isinstance(result, list) else ([] if result is None else [result])
            try:
                link.conn.ack(event.nsp, event.ack_id, args)
            except sio.SocketIOError as exc:
                self.log.error("cannot acknowledge %r: %s", event.name, exc)

    async def _ack_loop(self, link: _Link) -> None:
        """Answer queued acks in event order, waiting for each :class:`PendingAck`;
        flushes once per run of acks that are ready."""
        while True:
            acks = link.acks
            if not acks:
                await link.wait_acks_changed()
                continue
            client, event, result = acks[0]
            if isinstance(result, PendingAck):
                try:
                    result = await result.wait()
                except Exception:
                    self.log.exception("acknowledgement of %r failed for client %s", event.name, client.sid)
                    result = _NO_ACK
            acks.popleft()
            link.acks_changed()
            if result is not _NO_ACK:
                self._ack(link, client, event, result)
            if not acks or isinstance(acks[0][2], PendingAck):
                try:
                    await link.flush()
                except SessionEnded:
                    return


_NO_ACK = object()  # a PendingAck whose wait() failed


def _presented_token(auth: Any, query: str) -> str | None:
    """The token from the CONNECT ``auth`` payload, else from the ``token`` query parameter."""
    token = auth.get("token") if isinstance(auth, dict) else None
    if isinstance(token, str):
        return token
    values = parse_qs(query).get("token") if "token=" in query else None
    return values[0] if values else None
