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
``actor_stopped``; :data:`switchyard.remote.ERROR_CODES`), which
:class:`switchyard.remote.RemoteActorRef` raises as that same exception type on the
calling side.

The ``ipc_proxy`` kind is the other direction for manifests: a local actor that
forwards every message to one remote actor, so local code reaches it with
``system.lookup(name)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import attrs

from switchyard.protocols.ipc_framing import DEFAULT_MAX_FRAME_SIZE
from switchyard.remote import ERROR_CODES, open_remote_system
from switchyard.runtime import Actor, ActorError, ActorNotFound
from switchyard.runtime.ref import DEFAULT_ASK_TIMEOUT
from switchyard.runtime.stats import timed
from switchyard.transports.ipc.errors import ReplyError
from switchyard.transports.ipc.server import SocketServer

__all__ = ["IpcProxyActor", "IpcProxyConfig", "IpcServerActor", "IpcServerConfig"]


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
        observe = self.system.metrics.request_observer(self.name, "ipc")
        self.server.register_handler("actor.tell", timed(self._tell, observe))
        self.server.register_handler("actor.ask", timed(self._ask, observe))
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
        expose = self.config.expose
        # No list of names per request: it is built only to word the error.
        if (name not in expose) if expose else (name == self.name):
            raise ReplyError("actor_not_found", str(ActorNotFound(name, self._exposed())))
        try:
            return self.system.lookup(name), data.get("message")
        except ActorNotFound as exc:
            # Worded as before: by the registry if the name is exposed, else by what is.
            text = str(exc) if expose else str(ActorNotFound(name, self._exposed()))
            raise ReplyError("actor_not_found", text) from None

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
        for cls, code in ERROR_CODES.items():
            if isinstance(exc, cls):
                raise ReplyError(code, str(exc)) from exc


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
