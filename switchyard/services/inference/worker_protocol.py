"""Broker <-> worker framing of the scaled-out inference service (sans-IO).

Workers connect a DEALER socket to the broker's ROUTER. Every message starts with
the protocol tag :data:`TAG` and a one-byte command; the broker's ROUTER adds the
worker identity in front, which is not part of these frames.

Worker -> broker::

    READY      [TAG, b"R", msgpack {"capacity": int, "pid": int, "host": str,
                                    "task_types": [str], "models": [str]}]
    HEARTBEAT  [TAG, b"H"]
    DONE       [TAG, b"D", key, reply, event]    event: JSON body for ai_events or b""
    BYE        [TAG, b"B"]                       draining: send no more tasks; DONE
                                                 for those in flight still follows

Broker -> worker::

    TASK       [TAG, b"T", key, *request]        request: the client's body frames as-is
    HEARTBEAT  [TAG, b"H"]

``key`` is an opaque broker-chosen id (at most 32 bytes). A worker is free for
``capacity`` tasks at once; any message from a peer counts as a sign of life, and a
peer silent for ``liveness`` heartbeat intervals is presumed dead.
Parsing raises only :class:`WorkerProtocolError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from switchyard.protocols.codec import CodecError, msgpack_codec

__all__ = [
    "TAG",
    "Bye",
    "Done",
    "Heartbeat",
    "Ready",
    "Task",
    "WorkerProtocolError",
    "encode_bye",
    "encode_done",
    "encode_heartbeat",
    "encode_ready",
    "encode_task",
    "parse_from_broker",
    "parse_from_worker",
]

TAG = b"SYI-W1"
MAX_KEY = 32


class WorkerProtocolError(ValueError):
    """Frames that are not a valid broker/worker message."""


@attrs.frozen
class Ready:
    capacity: int
    pid: int = 0
    host: str = ""
    task_types: tuple[str, ...] = ()
    models: tuple[str, ...] = ()


@attrs.frozen
class Heartbeat:
    pass


@attrs.frozen
class Done:
    key: bytes
    reply: Any = attrs.field(eq=False)
    event: Any = attrs.field(eq=False)


@attrs.frozen
class Bye:
    pass


@attrs.frozen
class Task:
    key: bytes
    request: list[Any] = attrs.field(eq=False)


def _buf(frame: Any) -> memoryview:
    return frame.buffer if hasattr(frame, "buffer") else memoryview(frame)


def _head(frames: Sequence[Any]) -> bytes:
    if len(frames) < 2 or bytes(_buf(frames[0])) != TAG:
        raise WorkerProtocolError("not a switchyard inference worker message")
    command = bytes(_buf(frames[1]))
    if len(command) != 1:
        raise WorkerProtocolError("command frame must be one byte")
    return command


def _key(frame: Any) -> bytes:
    key = bytes(_buf(frame))
    if not key or len(key) > MAX_KEY:
        raise WorkerProtocolError(f"task key must be 1..{MAX_KEY} bytes")
    return key


def encode_ready(ready: Ready) -> list[bytes]:
    body = {
        "capacity": ready.capacity,
        "pid": ready.pid,
        "host": ready.host,
        "task_types": list(ready.task_types),
        "models": list(ready.models),
    }
    return [TAG, b"R", msgpack_codec.encode(body)]


def encode_heartbeat() -> list[bytes]:
    return [TAG, b"H"]


def encode_bye() -> list[bytes]:
    return [TAG, b"B"]


def encode_done(key: bytes, reply: Any, event: Any = b"") -> list[Any]:
    return [TAG, b"D", key, reply, event]


def encode_task(key: bytes, request: Sequence[Any]) -> list[Any]:
    return [TAG, b"T", key, *request]


def parse_from_worker(frames: Sequence[Any]) -> Ready | Heartbeat | Done | Bye:
    """A worker's message (identity frame already removed)."""
    command = _head(frames)
    if command == b"H" and len(frames) == 2:
        return Heartbeat()
    if command == b"B" and len(frames) == 2:
        return Bye()
    if command == b"D" and len(frames) == 5:
        return Done(key=_key(frames[2]), reply=frames[3], event=frames[4])
    if command == b"R" and len(frames) == 3:
        try:
            body = msgpack_codec.decode(_buf(frames[2]))
        except CodecError as exc:
            raise WorkerProtocolError(f"READY body is not msgpack: {exc}") from None
        if not isinstance(body, dict):
            raise WorkerProtocolError("READY body must be a map")
        capacity = body.get("capacity")
        pid = body.get("pid", 0)
        host = body.get("host", "")
        task_types = body.get("task_types", [])
        models = body.get("models", [])
        if not isinstance(capacity, int) or isinstance(capacity, bool) or not 1 <= capacity <= 1 << 20:
            raise WorkerProtocolError("READY capacity must be an integer 1..1048576")
        if not isinstance(pid, int) or not isinstance(host, str):
            raise WorkerProtocolError("READY pid must be an integer and host a string")
        for name, items in (("task_types", task_types), ("models", models)):
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise WorkerProtocolError(f"READY {name} must be a list of strings")
        return Ready(capacity=capacity, pid=pid, host=host, task_types=tuple(task_types), models=tuple(models))
    raise WorkerProtocolError(f"unknown worker command {command!r} with {len(frames)} frames")


def parse_from_broker(frames: Sequence[Any]) -> Task | Heartbeat:
    """The broker's message as a worker's DEALER receives it."""
    command = _head(frames)
    if command == b"H" and len(frames) == 2:
        return Heartbeat()
    if command == b"T" and len(frames) >= 4:
        return Task(key=_key(frames[2]), request=list(frames[3:]))
    raise WorkerProtocolError(f"unknown broker command {command!r} with {len(frames)} frames")
