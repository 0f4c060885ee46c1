"""Actors across processes over the IPC socket transport.

Serving side: the ``ipc_server`` actor kind exposes actors of its system on a Unix
socket (or TCP) through three methods of a
:class:`~switchyard.transports.ipc.server.SocketServer`:

* ``actor.tell``  ``{"actor", "message"}`` - as a request: answered once the message
  is in the mailbox (waiting while it is full); as a client push: ``tell_nowait``,
  nothing answered;
* ``actor.ask``   ``{"actor", "message", "timeout"}`` - answered with the reply;
* ``actor.stream`` ``{"actor", "message"}`` (through ``client.stream``) - one push per
  reply item;
* ``actor.names`` - the exposed actor names.

Errors come back as IPC errors whose codes name the runtime exception
(``actor_not_found``, ``actor_error``, ``ask_timeout``, ``mailbox_full``,
``actor_stopped``), and :class:`RemoteActorRef` raises that same exception type on
the calling side, so code written against a local ``ActorRef`` works unchanged::

    async with open_remote_system("/run/user/1000/switchyard/app.sock") as remote:
        echo = remote.lookup("echo")
        await echo.tell({"hi": 1})
        print(await echo.ask("ping", timeout=2.0))
        async with echo.stream({"count": 3}) as replies:
            async for item in replies: ...

Messages and replies must be values the connection's codec carries (JSON by
default; msgpack adds bytes). Transport failures keep their own types
(``ConnectionLost``, ``NotConnected``): they say nothing about the actor.

The ``ipc_proxy`` kind is the other direction for manifests: a local actor that
forwards every message to one remote actor, so local code reaches it with
``system.lookup(name)``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import attrs
import trio

from switchyard.protocols.ipc_framing import DEFAULT_MAX_FRAME_SIZE
from switchyard.runtime import Actor, ActorError, ActorNotFound, ActorStopped, AskTimeout, MailboxFull
from switchyard.runtime.ref import DEFAULT_ASK_TIMEOUT
from switchyard.transports.ipc.client import IpcStream, SocketClient
from switchyard.transports.ipc.errors import NotConnected, RemoteError, ReplyError, RequestTimeout
from switchyard.transports.ipc.server import SocketServer

__all__ = [
    "IpcProxyActor",
    "IpcProxyConfig",
    "IpcServerActor",
    "IpcServerConfig",
    "RemoteActorRef",
    "RemoteSystem",
    "open_remote_system",
]

# Extra time a client gives the server beyond an ask's own timeout, so that the
# server's ask_timeout answer (not a transport timeout) is what the caller sees.
_TRANSPORT_MARGIN = 1.0


# -- serving side ------------------------------------------------------------------
@attrs.frozen
class IpcServerConfig:
    address: str = ""  # Unix socket path or tcp://host:port; "" = the account's own path
    account_id: str = "switchyard"
    expose: list[str] = attrs.field(factory=list)  # actor names reachable; empty = all but this one
    heartbeat_interval: float = 15.0  # 0 turns heartbeats off
    heartbeat_timeout: float = 60.0
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_connections: int = 256
    max_in_flight: int = 64  # concurrent requests per connection before it stops reading
    max_ask_timeout: float = 300.0  # clamp on the timeout a client asks for (None = this)
    grace_period: float = 5.0  # in-flight requests get this long on stop


class IpcServerActor(Actor):
    """Exposes this system's actors (tell/ask/stream) on a Unix or TCP IPC socket."""

    Config = IpcServerConfig

    async def on_start(self) -> None:
        cfg: IpcServerConfig = self.config
        self.server = SocketServer(
            cfg.address or None,
            account_id=cfg.account_id,
            enable_health_check=cfg.heartbeat_interval > 0,
            health_check_interval=cfg.heartbeat_interval or 15.0,
            heartbeat_timeout=cfg.heartbeat_timeout,
            max_frame_size=cfg.max_frame_size,
            max_connections=cfg.max_connections,
            max_in_flight=cfg.max_in_flight,
            grace_period=cfg.grace_period,
            logger=self.log,
        )
        self.server.register_handler("actor.tell", self._tell)
        self.server.register_handler("actor.ask", self._ask)
        self.server.register_handler("actor.stream", self._stream)
        self.server.register_handler("actor.names", lambda _: self._exposed())
        self.address = await self.nursery.start(self.server.serve)

    async def on_stop(self) -> None:
        await self.server.aclose()

    async def handle(self, message: Any) -> Any:
        """``"stats"`` / ``"health"``: the server's counters or health report."""
        if message == "stats":
            return self.server.get_stats()
        if message == "health":
            return self.server.health()
        raise ValueError(f"unknown request {message!r} (known: 'stats', 'health')")

    def _exposed(self) -> list[str]:
        names = self.config.expose or [n for n in self.system.names() if n != self.name]
        return sorted(names)

    def _target(self, data: Any) -> tuple[Any, Any]:
        if not isinstance(data, dict) or not isinstance(data.get("actor"), str):
            raise ReplyError("bad_message", "expected {'actor': <name>, 'message': <any>}")
        name = data["actor"]
        exposed = self._exposed()
        if name not in exposed:
            raise ReplyError("actor_not_found", str(ActorNotFound(name, exposed)))
        try:
            return self.system.lookup(name), data.get("message")
        except ActorNotFound as exc:
            raise ReplyError("actor_not_found", str(exc)) from None

    async def _tell(self, data: Any) -> None:
        ref, message = self._target(data)
        with _as_reply_errors():
            if data.get("nowait"):
                ref.tell_nowait(message)
            else:
                await ref.tell(message)

    async def _ask(self, data: Any) -> Any:
        ref, message = self._target(data)
        timeout = data.get("timeout", DEFAULT_ASK_TIMEOUT)
        if timeout is None:
            timeout = self.config.max_ask_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ReplyError("bad_message", f"'timeout' must be a number >= 0, not {timeout!r}")
        with _as_reply_errors():
            return await ref.ask(message, timeout=min(float(timeout), self.config.max_ask_timeout))

    async def _stream(self, data: Any) -> AsyncIterator[Any]:
        ref, message = self._target(data)
        with _as_reply_errors():
            async with ref.stream(message) as replies:
                async for item in replies:
                    yield item


class _as_reply_errors:
    """Turn the runtime's exceptions into coded IPC error answers."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None or not isinstance(exc, Exception):
            return
        if isinstance(exc, ActorError):
            raise ReplyError("actor_error", f"{exc.type_name}\n{exc.detail}") from exc
        for cls, code in _CODES.items():
            if isinstance(exc, cls):
                raise ReplyError(code, str(exc)) from exc


_CODES: dict[type[Exception], str] = {
    AskTimeout: "ask_timeout",
    MailboxFull: "mailbox_full",
    ActorStopped: "actor_stopped",
    ActorNotFound: "actor_not_found",
}


# -- calling side -------------------------------------------------------------------
def _local_error(actor: str, exc: RemoteError, timeout: float | None = None) -> Exception:
    """The runtime exception a local ref would have raised for this remote error."""
    if exc.code == "actor_error":
        type_name, _, detail = exc.detail.partition("\n")
        error = ActorError(actor, None, detail)
        error.type_name = type_name
        error.args = (f"actor {actor!r} failed: {type_name}: {detail}",)
        return error
    if exc.code == "ask_timeout":
        return AskTimeout(actor, timeout if timeout is not None else math.inf)
    if exc.code == "mailbox_full":
        full = MailboxFull(actor, 0)
        full.args = (exc.detail,)
        return full
    if exc.code == "actor_stopped":
        return ActorStopped(actor)
    if exc.code == "actor_not_found":
        missing = ActorNotFound(actor, [])
        missing.args = (exc.detail,)
        return missing
    return exc


class RemoteActorRef:
    """An actor in another process, with the methods of a local ``ActorRef``.

    ``tell`` returns once the message is in the remote mailbox; ``tell_nowait``
    queues it in a bounded local outbox (``MailboxFull`` when that is full) that a
    task of the :class:`RemoteSystem` delivers in order; remote delivery errors of
    ``tell_nowait`` are only logged (on both sides), as nobody waits for them.
    """

    __slots__ = ("_name", "_remote")

    def __init__(self, remote: RemoteSystem, name: str) -> None:
        self._remote = remote
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"<RemoteActorRef {self._name!r} at {self._remote.client.address}>"

    async def tell(self, message: Any) -> None:
        try:
            await self._remote.client.request("actor.tell", {"actor": self._name, "message": message})
        except RemoteError as exc:
            raise _local_error(self._name, exc) from None

    def tell_nowait(self, message: Any) -> None:
        try:
            self._remote._outbox_send.send_nowait((self._name, message))
        except trio.WouldBlock:
            raise MailboxFull(self._name, self._remote.outbox_capacity) from None
        except trio.ClosedResourceError:
            raise ActorStopped(self._name, "is unreachable: the remote system is closed") from None

    async def ask(self, message: Any, timeout: float | None = DEFAULT_ASK_TIMEOUT) -> Any:
        data = {"actor": self._name, "message": message, "timeout": timeout}
        transport_timeout = None if timeout is None else timeout + _TRANSPORT_MARGIN
        try:
            return await self._remote.client.request("actor.ask", data, timeout=transport_timeout)
        except RemoteError as exc:
            raise _local_error(self._name, exc, timeout) from None
        except RequestTimeout:
            raise AskTimeout(self._name, timeout if timeout is not None else math.inf) from None

    def stream(self, message: Any) -> RemoteReplyStream:
        """``async with ref.stream(msg) as replies: async for r in replies`` (or just ``async for``)."""
        return RemoteReplyStream(self, message)


class RemoteReplyStream:
    """Consumer side of :meth:`RemoteActorRef.stream`; mirrors ``ReplyStream``."""

    def __init__(self, ref: RemoteActorRef, message: Any) -> None:
        self._ref = ref
        self._stream: IpcStream = ref._remote.client.stream("actor.stream", {"actor": ref.name, "message": message})
        self._started = False
        self._closed = False

    async def __aenter__(self) -> RemoteReplyStream:
        await self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _start(self) -> None:
        self._started = True
        await self._stream.__aenter__()

    def __aiter__(self) -> RemoteReplyStream:
        return self

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        if not self._started:
            await self._start()
        try:
            return await self._stream.__anext__()
        except StopAsyncIteration:
            await self.aclose()
            raise
        except RemoteError as exc:
            await self.aclose()
            raise _local_error(self._ref.name, exc) from None

    async def aclose(self) -> None:
        """Stop consuming; the remote producer is cancelled if it is still running."""
        if not self._closed:
            self._closed = True
            if self._started:
                await self._stream.aclose()


class RemoteSystem:
    """The actors another process exposes with an ``ipc_server`` actor."""

    def __init__(self, client: SocketClient, outbox_capacity: int = 256) -> None:
        self.client = client
        self.outbox_capacity = outbox_capacity
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[tuple[str, Any]](outbox_capacity)

    def lookup(self, name: str) -> RemoteActorRef:
        """A ref to the remote actor ``name`` (checked on first use, not here)."""
        return RemoteActorRef(self, name)

    async def names(self) -> list[str]:
        """The names the remote ``ipc_server`` exposes."""
        return await self.client.request("actor.names")

    async def _deliver_outbox(self) -> None:
        async with self._outbox_receive:
            async for name, message in self._outbox_receive:
                try:
                    await self.client.notify("actor.tell", {"actor": name, "message": message, "nowait": True})
                except Exception as exc:  # nobody awaits a tell_nowait: log and go on
                    self.client.log.warning("tell_nowait to remote actor %r not delivered: %s", name, exc)


@asynccontextmanager
async def open_remote_system(
    address: str, *, max_retries: int = 1, wait: bool = True, outbox_capacity: int = 256, **client_options: Any
) -> AsyncIterator[RemoteSystem]:
    """Connect to a remote ``ipc_server`` for the block (``NotConnected`` if it cannot).

    With ``wait=False`` the block starts at once and the client keeps trying to
    connect in the background; calls made meanwhile wait up to their timeouts.

    ``client_options`` go to :class:`~switchyard.transports.ipc.client.SocketClient`
    (``account_id``, ``codec``, reconnect and heartbeat settings, ...). On exit,
    messages still in the ``tell_nowait`` outbox get up to the client's
    ``request_timeout`` to be delivered.
    """
    async with SocketClient(address, **client_options) as client:
        if not wait:
            client.start_connecting()
        elif not await client.connect(max_retries=max_retries):
            raise NotConnected(f"could not connect to {client.address} in {max_retries} attempt(s)")
        remote = RemoteSystem(client, outbox_capacity)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(remote._deliver_outbox)
            try:
                yield remote
            finally:
                remote._outbox_send.close()  # the delivery task drains the rest, then ends
                nursery.cancel_scope.deadline = trio.current_time() + (client.request_timeout or 5.0)


# -- a local stand-in for a remote actor ---------------------------------------------
@attrs.frozen
class IpcProxyConfig:
    address: str  # where the remote ipc_server listens (Unix path or tcp://host:port)
    actor: str  # the remote actor's name
    account_id: str | None = None  # checked against the server's, if set
    codec: str = "json"
    ask_timeout: float = 5.0  # for each forwarded message
    request_timeout: float = 10.0
    heartbeat_interval: float = 15.0
    max_reconnect_attempts: int = 0  # 0 = keep trying


class IpcProxyActor(Actor):
    """Stands in for an actor of another process: forwards each message to it over IPC."""

    Config = IpcProxyConfig

    async def on_start(self) -> None:
        cfg: IpcProxyConfig = self.config
        self.remote = await self.enter(
            open_remote_system(
                cfg.address,
                wait=False,  # ready at once; messages wait for the peer up to their timeouts
                account_id=cfg.account_id,
                codec=cfg.codec,
                request_timeout=cfg.request_timeout,
                heartbeat_interval=cfg.heartbeat_interval,
                max_reconnect_attempts=cfg.max_reconnect_attempts,
                logger=self.log,
            )
        )
        self.target = self.remote.lookup(cfg.actor)

    async def handle(self, message: Any) -> Any:
        """Forwarded as an ``ask`` (also for ``tell``: one message at a time, in order)."""
        return await self.target.ask(message, timeout=self.config.ask_timeout)

    async def handle_stream(self, message: Any) -> AsyncIterator[Any]:
        async with self.target.stream(message) as replies:
            async for item in replies:
                yield item
