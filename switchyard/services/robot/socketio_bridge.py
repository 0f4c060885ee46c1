"""The Socket.IO bridge actor: browser front ends <-> the robot worker actor.

Serves Socket.IO 5 / Engine.IO 4 (polling, WebSocket and the upgrade between them)
on ``http://<host>:<port><path>`` through :mod:`switchyard.transports.socketio_server`.

Client events (each answered through the client's acknowledgement callback):

* ``update``, ``start``, ``process``: sent to the actor named ``worker`` as a
  :class:`~switchyard.services.robot.messages.RobotRequest`; its ``{status, message,
  data}`` reply is the ack. If the worker cannot answer (gone, or no answer within
  ``request_timeout``) the ack is ``{status: "error", message: <why>, data: null}``.
  The request is told with a :class:`~switchyard.services.robot.messages.Reply` and
  the ack comes as a :class:`~switchyard.transports.socketio_server.PendingAck`, so
  the client's next event is read (and queued at the worker) while the worker runs
  this one; the worker still runs them one at a time, in order, and the acks go out
  in order. ``request_timeout`` counts from when the previous event was answered. A
  request still queued when the client leaves is dropped by the worker (not run);
* ``echo``: acks its arguments unchanged (a health check; the benchmark uses it);
* anything else: an error ack naming the known events.

Messages: :class:`~switchyard.services.robot.messages.Push` told to this actor is
emitted to every connected client (normally the one). When a client disconnects, the
worker is told ``stop`` so user threads end while loaded modules stay.
"""

from __future__ import annotations

import logging
import os
import time
from functools import partial
from typing import Any

import attrs
import trio

from switchyard.runtime import Actor, ActorNotFound, ActorStopped, MailboxFull
from switchyard.runtime.config import port as valid_port
from switchyard.runtime.stats import timed
from switchyard.services.robot.messages import Push, Reply, RobotRequest, ack
from switchyard.transports.http_server import HttpLimits
from switchyard.transports.socketio_engine import EngineConfig, SessionEnded
from switchyard.transports.socketio_server import (
    PendingAck,
    SocketIOClient,
    SocketIOConfig,
    SocketIOServer,
    is_loopback,
)

__all__ = ["FORWARDED_EVENTS", "TOKEN_ENV", "SocketIOBridgeActor", "SocketIOBridgeConfig"]

FORWARDED_EVENTS = ("update", "start", "process")

#: Environment variable read for the token when the manifest sets no ``auth_token``.
TOKEN_ENV = "SWITCHYARD_ROBOT_TOKEN"

log = logging.getLogger("switchyard.services.robot.socketio_bridge")

# Flat keys of older manifests -> the engine field each one now lives in.
_LEGACY_ENGINE_KEYS = {
    "path": "path",
    "max_message_size": "max_payload",
    "ping_interval": "ping_interval",
    "ping_timeout": "ping_timeout",
    "cors_allowed_origins": "cors_allowed_origins",
    "allow_polling": "allow_polling",
    "allow_websocket": "allow_websocket",
    "max_sessions": "max_sessions",
}


@attrs.frozen
class SocketIOBridgeConfig:
    """The bridge's config: its own keys, the Engine.IO table ``engine`` and the HTTP
    table ``http`` (see docs/robot.md). ``auth_token`` falls back to the environment
    variable :data:`TOKEN_ENV`; it is never shown in the repr (nor logged).

    The flat keys of older manifests (``path``, ``max_message_size``, ``ping_interval``,
    ``ping_timeout``, ``cors_allowed_origins``, ``allow_polling``, ``allow_websocket``,
    ``max_sessions``) still work, each with a one-line deprecation warning, and win
    over the ``engine`` table.
    """

    host: str = "127.0.0.1"
    port: int = attrs.field(default=8000, validator=valid_port)
    max_clients: int = 1  # 0: no limit
    auth_token: str | None = attrs.field(default=None, repr=False)
    allow_anonymous: bool = False  # serve a non-loopback host without a token
    connect_timeout: float = 10.0  # a session that joins no namespace by then is closed
    worker: str = "robot_worker"  # actor that serves update/start/process/stop
    request_timeout: float = 330.0  # keep above the worker's max_execution_time
    engine: EngineConfig = EngineConfig()
    http: HttpLimits | None = None  # default: HttpLimits() with a body limit of engine.max_payload
    # deprecated flat keys (see the class docstring)
    path: str | None = None
    max_message_size: int | None = None
    ping_interval: float | None = None
    ping_timeout: float | None = None
    cors_allowed_origins: list[str] | None = None
    allow_polling: bool | None = None
    allow_websocket: bool | None = None
    max_sessions: int | None = None

    def __attrs_post_init__(self) -> None:
        legacy = {new: getattr(self, old) for old, new in _LEGACY_ENGINE_KEYS.items() if getattr(self, old) is not None}
        if legacy:
            old_keys = [old for old, new in _LEGACY_ENGINE_KEYS.items() if new in legacy]
            log.warning(
                "socketio_bridge: flat keys %s are deprecated; put them in the [actor.config.engine] table%s",
                ", ".join(old_keys),
                " (max_message_size is engine.max_payload)" if "max_payload" in legacy else "",
            )
            if "cors_allowed_origins" in legacy:
                legacy["cors_allowed_origins"] = tuple(legacy["cors_allowed_origins"])
            object.__setattr__(self, "engine", attrs.evolve(self.engine, **legacy))
            for old in _LEGACY_ENGINE_KEYS:
                object.__setattr__(self, old, None)
        if not self.auth_token:
            object.__setattr__(self, "auth_token", os.environ.get(TOKEN_ENV) or None)
        if not self.auth_token and not self.allow_anonymous and not is_loopback(self.host):
            raise ValueError(
                f"refusing to serve on non-loopback host {self.host!r} without a token: set auth_token in the "
                f"manifest or {TOKEN_ENV} in the environment (clients send it as auth: {{token}}), "
                "or allow_anonymous = true"
            )

    def server_config(self) -> SocketIOConfig:
        """The :class:`SocketIOConfig` this bridge serves with."""
        return SocketIOConfig(
            host=self.host,
            port=self.port,
            engine=self.engine,
            max_clients=self.max_clients,
            auth_token=self.auth_token,
            allow_anonymous=self.allow_anonymous,
            connect_timeout=self.connect_timeout,
            http=self.http,
        )


class SocketIOBridgeActor(Actor):
    """Socket.IO server for robot front ends; forwards update/start/process to the robot worker."""

    Config = SocketIOBridgeConfig
    mailbox_capacity = 256

    async def on_start(self) -> None:
        # each event's handling time goes to the request latency histogram
        self._observe = self.system.metrics.request_observer(self.name, "socketio")
        self._timed_event = timed(self._on_event, self._observe)
        self.server = SocketIOServer(self, self.config.server_config(), logger=self.log)
        self.port = await self.nursery.start(self.server.serve)

    # -- Socket.IO handler ------------------------------------------------------------
    async def on_connect(self, client: SocketIOClient, auth: Any) -> None:
        return None

    async def on_event(self, client: SocketIOClient, name: str, args: list[Any]) -> Any:
        if name in FORWARDED_EVENTS:
            return await self._forward(name, args[0] if args else None)
        return await self._timed_event(client, name, args)

    async def _on_event(self, client: SocketIOClient, name: str, args: list[Any]) -> Any:
        if name == "echo":
            return args
        known = ", ".join((*FORWARDED_EVENTS, "echo"))
        return ack("error", f"unknown event {name!r} (known: {known})")

    async def _forward(self, command: str, payload: Any) -> PendingAck | dict[str, Any]:
        """Queue ``command`` at the worker; the ack (a PendingAck) comes with its reply."""
        started = time.perf_counter()
        reply = Reply()
        request = RobotRequest(command, payload, reply)
        try:
            worker = self.system.lookup(self.config.worker)
            try:
                worker.tell_nowait(request)
            except MailboxFull:
                with trio.move_on_after(self.config.request_timeout):
                    await worker.tell(request)  # waits for room (backpressure)
                    return PendingAck(partial(self._await_reply, reply, started), reply.abandon)
                return self._answered(started, self._timeout_ack())
        except ActorNotFound:
            return self._answered(
                started, ack("error", f"no robot worker actor named {self.config.worker!r} is running")
            )
        except ActorStopped:
            return self._answered(started, ack("error", "the robot worker is not running"))
        return PendingAck(partial(self._await_reply, reply, started), reply.abandon)

    async def _await_reply(self, reply: Reply, started: float) -> dict[str, Any]:
        value: dict[str, Any] | None = None
        try:
            with trio.move_on_after(self.config.request_timeout):
                value = await reply.wait()
        finally:
            reply.abandon()  # answered, timed out or cancelled: nobody waits any more
        if not reply.resolved:
            return self._answered(started, self._timeout_ack())
        if not isinstance(value, dict):
            return self._answered(started, ack("error", "the robot worker gave no answer"))
        return self._answered(started, value)

    def _answered(self, started: float, value: dict[str, Any]) -> dict[str, Any]:
        self._observe(time.perf_counter() - started)
        return value

    def _timeout_ack(self) -> dict[str, Any]:
        return ack("error", f"the robot worker did not answer within {self.config.request_timeout:g} s")

    async def on_disconnect(self, client: SocketIOClient, reason: str) -> None:
        self.log.info("client %s disconnected (%s); telling the worker to stop user threads", client.sid, reason)
        try:
            await self.system.lookup(self.config.worker).tell(RobotRequest("stop", {}))
        except (ActorNotFound, ActorStopped) as exc:
            self.log.warning("could not tell the worker to stop: %s", exc)

    # -- mailbox ----------------------------------------------------------------------
    async def handle(self, message: Any) -> Any:
        if not isinstance(message, Push):
            raise TypeError(f"the Socket.IO bridge takes Push messages, not {type(message).__name__}")
        clients = list(self.server.clients.values())
        if not clients:
            self.log.debug("no client connected; %r event not delivered", message.event)
            return 0
        delivered = 0
        for client in clients:
            try:
                await client.emit(message.event, message.data)
                delivered += 1
            except SessionEnded:
                pass
            except (ValueError, trio.BrokenResourceError) as exc:
                self.log.warning("cannot emit %r: %s", message.event, exc)
        return delivered
