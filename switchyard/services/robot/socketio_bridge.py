"""The Socket.IO bridge actor: browser front ends <-> the robot worker actor.

Serves Socket.IO 5 / Engine.IO 4 (polling, WebSocket and the upgrade between them)
on ``http://<host>:<port><path>`` through :mod:`switchyard.transports.socketio_server`.

Client events (each answered through the client's acknowledgement callback):

* ``update``, ``start``, ``process``: asked of the actor named ``worker`` as a
  :class:`~switchyard.services.robot.messages.RobotRequest`; its ``{status, message,
  data}`` reply is the ack. If the worker cannot answer (gone, or no answer within
  ``request_timeout``) the ack is ``{status: "error", message: <why>, data: null}``;
* ``echo``: acks its arguments unchanged (a health check; the benchmark uses it);
* anything else: an error ack naming the known events.

Messages: :class:`~switchyard.services.robot.messages.Push` told to this actor is
emitted to every connected client (normally the one). When a client disconnects, the
worker is told ``stop`` so user threads end while loaded modules stay.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from switchyard.runtime import Actor, ActorError, ActorNotFound, ActorStopped, AskTimeout
from switchyard.services.robot.messages import Push, RobotRequest, ack
from switchyard.transports.socketio_engine import DEFAULT_ORIGINS, EngineConfig, SessionEnded
from switchyard.transports.socketio_server import SocketIOClient, SocketIOConfig, SocketIOServer

__all__ = ["FORWARDED_EVENTS", "SocketIOBridgeActor", "SocketIOBridgeConfig"]

FORWARDED_EVENTS = ("update", "start", "process")


@attrs.frozen
class SocketIOBridgeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    path: str = "/socket.io/"
    max_message_size: int = 100 * 1024 * 1024  # Engine.IO maxPayload
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    cors_allowed_origins: list[str] = attrs.Factory(lambda: list(DEFAULT_ORIGINS))
    max_clients: int = 1  # 0: no limit
    auth_token: str | None = None  # when set, clients connect with auth {token: ...}
    worker: str = "robot_worker"  # actor that serves update/start/process/stop
    request_timeout: float = 330.0  # keep above the worker's max_execution_time
    allow_polling: bool = True
    allow_websocket: bool = True
    max_sessions: int = 64


class SocketIOBridgeActor(Actor):
    """Socket.IO server for robot front ends; forwards update/start/process to the robot worker."""

    Config = SocketIOBridgeConfig
    mailbox_capacity = 256

    async def on_start(self) -> None:
        cfg = self.config
        engine = EngineConfig(
            path=cfg.path if cfg.path.endswith("/") else cfg.path + "/",
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout,
            max_payload=cfg.max_message_size,
            cors_allowed_origins=tuple(cfg.cors_allowed_origins),
            allow_polling=cfg.allow_polling,
            allow_websocket=cfg.allow_websocket,
            max_sessions=cfg.max_sessions,
        )
        self.server = SocketIOServer(
            self,
            SocketIOConfig(
                host=cfg.host, port=cfg.port, engine=engine, max_clients=cfg.max_clients, auth_token=cfg.auth_token
            ),
            logger=self.log,
        )
        self.port = await self.nursery.start(self.server.serve)

    # -- Socket.IO handler ------------------------------------------------------------
    async def on_connect(self, client: SocketIOClient, auth: Any) -> None:
        return None

    async def on_event(self, client: SocketIOClient, name: str, args: list[Any]) -> Any:
        payload = args[0] if args else None
        if name == "echo":
            return args
        if name in FORWARDED_EVENTS:
            return await self._ask_worker(RobotRequest(name, payload))
        known = ", ".join((*FORWARDED_EVENTS, "echo"))
        return ack("error", f"unknown event {name!r} (known: {known})")

    async def on_disconnect(self, client: SocketIOClient, reason: str) -> None:
        self.log.info("client %s disconnected (%s); telling the worker to stop user threads", client.sid, reason)
        try:
            await self.system.lookup(self.config.worker).tell(RobotRequest("stop", {}))
        except (ActorNotFound, ActorStopped) as exc:
            self.log.warning("could not tell the worker to stop: %s", exc)

    async def _ask_worker(self, request: RobotRequest) -> dict[str, Any]:
        try:
            worker = self.system.lookup(self.config.worker)
            reply = await worker.ask(request, timeout=self.config.request_timeout)
        except ActorNotFound:
            return ack("error", f"no robot worker actor named {self.config.worker!r} is running")
        except ActorStopped:
            return ack("error", "the robot worker is not running")
        except AskTimeout:
            return ack("error", f"the robot worker did not answer within {self.config.request_timeout:g} s")
        except ActorError as exc:
            return ack("error", f"the robot worker failed: {exc}")
        if not isinstance(reply, dict):
            return ack("error", "the robot worker gave no answer")
        return reply

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
