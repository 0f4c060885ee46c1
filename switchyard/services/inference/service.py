"""The inference service: ONNX Runtime behind the meeting system's ZeroMQ task protocol.

A ROUTER socket (default ``tcp://127.0.0.1:5555``) serves REQ clients, such as the Go
``ai-inference-service``, and DEALER clients that send an empty
delimiter frame before the body, as a REQ socket does. Each request is either one
JSON frame (:mod:`switchyard.services.inference.protocol`) or the binary fast path
(:mod:`switchyard.services.inference.binary`); each gets exactly one reply in its
own format, also for a body over ``max_message_size``, a handler over
``request_timeout`` or anything unparseable. After each task an event is published
on ``events_endpoint`` under the topic ``ai_events``.

Models, batching and execution are the engine's
(:mod:`switchyard.services.inference.engine`); its settings are this config's too.
``spawn`` returns once preloaded models are loaded and both sockets are bound.

In-process use: ``await ref.ask(TaskRequest(...))`` returns a ``TaskReply`` (served
one at a time, so no batching across asks), ``await ref.ask("status")`` the counters.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any, ClassVar, Literal

import attrs

from switchyard.protocols.codec import CodecError, msgpack_codec
from switchyard.runtime import Actor
from switchyard.runtime.config import endpoint as config_endpoint
from switchyard.runtime.ratelog import RateLimitedLog
from switchyard.runtime.stats import timed
from switchyard.services.inference.engine import EngineConfig, InferenceEngine, Served
from switchyard.services.inference.events import EventPublisher
from switchyard.services.inference.extras import attach_extras
from switchyard.services.inference.models import check_model_files
from switchyard.services.inference.protocol import TaskReply, TaskRequest, encode_reply, sniff_task_id, task_event
from switchyard.transports.zmq_bridges import (
    LIMIT_KEYS_MOVED,
    EndpointConfig,
    EndpointLimits,
    HandlerTimeout,
    MessageTooLarge,
    ReqRepServer,
)

__all__ = [
    "InferenceActor",
    "InferenceConfig",
    "error_reply_for",
    "failure_reply",
    "start_client_server",
    "start_events",
]


@attrs.frozen
class InferenceConfig(EngineConfig):
    """Service settings; the model/batching fields come from :class:`EngineConfig`."""

    renamed_keys: ClassVar[dict[str, str]] = LIMIT_KEYS_MOVED

    endpoint: str = attrs.field(default="tcp://127.0.0.1:5555", validator=config_endpoint)
    #: Limits (``[actor.config.limits]``): 4 MiB requests, 30 s per task.
    limits: EndpointLimits = attrs.field(factory=lambda: EndpointLimits(max_message_size=4 << 20, request_timeout=30.0))
    #: PUB endpoint for ``ai_events`` ("" = publish nothing).
    events_endpoint: str = attrs.field(default="tcp://127.0.0.1:5556", validator=config_endpoint)
    events_topic: str = "ai_events"
    #: Where ai_events go: "zmq" (PUB on events_endpoint), "redis" (channel events_topic
    #: at redis_url) or "both" (switchyard.services.inference.redis_events).
    events: Literal["zmq", "redis", "both"] = "zmq"
    #: "" = $SWITCHYARD_REDIS_URL or redis://127.0.0.1:6379/0 (used only for Redis events).
    redis_url: str = ""
    #: Serve voice_activity_detection with silero-vad when it is installed.
    vad_enabled: bool = True


def _frame_bytes(frame: Any) -> memoryview:
    return frame.buffer if hasattr(frame, "buffer") else memoryview(frame)


def error_reply_for(exc: BaseException, body: Any) -> bytes:
    """The ``error`` reply for a request the handler could not serve, in its own format."""
    if isinstance(exc, MessageTooLarge):
        message = f"request too large: {exc}"
    elif isinstance(exc, HandlerTimeout):
        message = f"task timed out: {exc}"
    else:
        message = f"internal error: {type(exc).__name__}: {exc}"
    return failure_reply(message, body if isinstance(body, list) else [body])


def failure_reply(message: str, frames: list[Any]) -> bytes:
    """An ``error`` reply to the request ``frames`` (JSON or binary form, as they are),
    naming its task id if it can be found without parsing the whole body."""
    if len(frames) == 2:
        task_id = ""
        try:
            header = msgpack_codec.decode(_frame_bytes(frames[0])[:65536])
            if isinstance(header, dict) and isinstance(header.get("task_id"), str):
                task_id = header["task_id"]
        except CodecError:
            pass
        return encode_reply(TaskReply.failure(task_id, message), msgpack_codec)
    task_id = sniff_task_id(_frame_bytes(frames[0])) if frames else ""
    return encode_reply(TaskReply.failure(task_id, message))


async def start_events(actor: Actor, config: Any) -> tuple[EventPublisher | None, str | None]:
    """Start ``actor``'s ``ai_events`` publisher from ``config.events_endpoint``/``events_topic``
    in its nursery; ``(None, None)`` when ``events_endpoint`` is empty."""
    if not config.events_endpoint or getattr(config, "events", "zmq") == "redis":
        return None, None
    events = EventPublisher(config.events_endpoint, topic=config.events_topic.encode("utf-8"), logger=actor.log)
    return events, await actor.nursery.start(events.run)


async def start_client_server(actor: Actor, config: Any, handler: Any) -> tuple[ReqRepServer, str]:
    """Bind the client-facing ROUTER (REQ and DEALER clients, JSON or binary requests)
    with ``config``'s limits; every failure is answered by :func:`error_reply_for`."""
    server = ReqRepServer(
        EndpointConfig.from_config(config),
        timed(handler, actor.system.metrics.request_observer(actor.name, "zmq_rep")),
        error_reply=error_reply_for,
        multipart=True,
        name=f"{actor.name}.reqrep",
        logger=actor.log,
    )
    return server, await actor.nursery.start(server.serve)


class InferenceActor(Actor):
    """ONNX inference over ZeroMQ REQ/REP (Go JSON tasks, binary tensors), batching, ai_events."""

    Config = InferenceConfig

    @classmethod
    def check_config(cls, config: InferenceConfig) -> None:
        check_model_files(config.models, config.models_dir)

    mailbox_capacity = 64

    async def on_start(self) -> None:
        config: InferenceConfig = self.config
        self.engine = InferenceEngine(config, logger=self.log)
        await self.nursery.start(self.engine.run)
        self.events, self.events_endpoint = await start_events(self, config)
        self.events = await attach_extras(self, config, self.events)
        self.failures = RateLimitedLog(self.log, level=logging.INFO, what="failed tasks")
        self.server, self.endpoint = await start_client_server(self, config, self._serve_frames)
        self.log.info(
            "inference serving %s on %s (events on %s; task types: %s)",
            ", ".join(self.engine.registry.names),
            self.endpoint,
            self.events_endpoint or "off",
            ", ".join(self.engine.registry.task_types),
        )

    async def on_stop(self) -> None:
        await self.server.drain()

    def _serve_frames(self, frames: list[Any]) -> bytes | Coroutine[Any, Any, bytes]:
        """The reply to one request: at once when the engine serves it without waiting
        (a plain call for the bridge: no coroutine, no cancel scope), else a coroutine."""
        served = self.engine.begin(frames)
        if isinstance(served, Served):
            return self._finish(served, frames)
        return self._finish_later(served, frames)

    async def _finish_later(self, pending: Coroutine[Any, Any, Served], frames: list[Any]) -> bytes:
        return self._finish(await pending, frames)

    def _finish(self, served: Served, frames: list[Any]) -> bytes:
        if not served.ok:
            kind = "binary" if len(frames) == 2 else "json"
            self.failures("task failed (%s): %s", kind, served.reply[:300].decode("utf-8", "replace"))
        if served.event is not None and self.events is not None:
            self.events.publish(served.event)
        return served.reply

    async def handle(self, message: Any) -> Any:
        if isinstance(message, TaskRequest):
            reply = await self.engine.run_request(message)
            if self.events is not None:
                self.events.publish(task_event(message.task_type, reply, message.params))
            return reply
        if message == "status":
            return self.status()
        raise ValueError(f"unknown message {message!r}: send a TaskRequest or 'status'")

    def status(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "events_endpoint": self.events_endpoint,
            "models": {name: self.engine.registry.loaded(name) is not None for name in self.engine.registry.names},
            "task_types": self.engine.registry.task_types,
            "tasks": dict(self.engine.stats),
            "batches": self.engine.batcher_stats(),
            "events": dict(self.events.stats) if self.events else {},
            "server": dict(self.server.stats),
        }
