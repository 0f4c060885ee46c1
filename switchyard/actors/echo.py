"""The echo/health actor: a REQ/REP endpoint that answers every request.

Wire format (JSON, one frame): a request ``{"op": "echo", "data": ...}`` gets
``{"ok": true, "data": ...}``; ``{"op": "health"}`` gets ``{"ok": true, "app":
..., "actors": {name: {state, handled, errors, restarts, mailbox_depth}}}``.
Anything else (bad JSON, unknown op) gets ``{"ok": false, "error": "..."}``.
Inside the system the actor answers ``ask(message)`` with ``message`` unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from switchyard.protocols.codec import CodecError, json_codec
from switchyard.runtime import Actor
from switchyard.runtime.config import endpoint as valid_endpoint
from switchyard.runtime.stats import timed
from switchyard.transports.zmq_bridges import LIMIT_KEYS_MOVED, EndpointConfig, EndpointLimits, ReqRepServer


@attrs.frozen
class EchoConfig:
    """``[actor.config]`` of an ``echo`` actor."""

    renamed_keys: ClassVar[dict[str, str]] = LIMIT_KEYS_MOVED

    endpoint: str = attrs.field(default="tcp://127.0.0.1:5590", validator=valid_endpoint)
    #: Limits: ``[actor.config.limits]`` (:class:`~switchyard.transports.zmq_bridges.EndpointLimits`).
    limits: EndpointLimits = attrs.field(factory=EndpointLimits)


class EchoActor(Actor):
    """Echo and health checks over ZeroMQ REQ/REP (JSON), for smoke tests and monitoring."""

    Config = EchoConfig

    async def on_start(self) -> None:
        self.server = ReqRepServer(
            EndpointConfig.from_config(self.config),
            timed(self._reply, self.system.metrics.request_observer(self.name, "zmq_rep")),
            error_reply=self._error_reply,
            name=f"{self.name}.reqrep",
            logger=self.log,
        )
        self.endpoint = await self.nursery.start(self.server.serve)
        self.log.info("echo/health serving on %s", self.endpoint)

    async def on_stop(self) -> None:
        await self.server.drain()

    async def handle(self, message: Any) -> Any:
        return message

    def _reply(self, body: bytes) -> bytes:
        request = json_codec.decode(body)
        if not isinstance(request, dict):
            raise ValueError("request must be a JSON object")
        op = request.get("op", "echo")
        if op == "echo":
            return json_codec.encode({"ok": True, "data": request.get("data")})
        if op == "health":
            actors = {
                name: {k: v for k, v in stats.as_dict().items() if k not in ("name", "kind")}
                for name, stats in self.system.stats().items()
            }
            return json_codec.encode({"ok": True, "app": self.system.name, "actors": actors})
        raise ValueError(f"unknown op {op!r} (known: echo, health)")

    @staticmethod
    def _error_reply(exc: BaseException, body: Any) -> bytes:
        reason = str(exc) if isinstance(exc, CodecError | ValueError) else f"{type(exc).__name__}: {exc}"
        return json_codec.encode({"ok": False, "error": reason})
