"""The IPC message body: one shape for requests, responses, pushes, heartbeats and errors.

A body on the wire is a JSON object or a msgpack map with these keys::

    {"kind": "request", "id": "c1f3-7", "method": "echo", "data": {...}, "timestamp": 1732512345.25}

* ``kind``: ``request`` | ``response`` | ``push`` | ``heartbeat`` | ``error`` (required).
* ``id``: text chosen by whoever sends a request (or heartbeat ping); the
  ``response`` / ``error`` / heartbeat ``pong`` that answers it repeats it. Pushes
  that belong to a streamed request carry that request's id, free pushes ``""``.
* ``method``: the handler name for requests and pushes; ``ping`` / ``pong`` for
  heartbeats; the request's method on its answer.
* ``data``: any value the connection's codec carries (``null`` if absent).
* ``timestamp``: seconds since the Unix epoch when the sender built the body.

An ``error`` body's ``data`` is ``{"code": <text>, "message": <text>}``; the codes
are the ``ERR_*`` constants below. Missing ``id`` / ``method`` / ``data`` /
``timestamp`` take their defaults and unknown keys are ignored, so a hand-written
peer only needs ``kind``. Which codec a connection uses is decided by the first
byte of its first body: ``{`` (or JSON whitespace) means JSON, a msgpack map marker
means msgpack; see :func:`sniff_codec`.

This module does no I/O (see :mod:`switchyard.protocols.ipc_framing` for bytes on a
stream).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from typing import Any

import attrs

from switchyard.protocols.codec import Codec, CodecError, json_codec, msgpack_codec

__all__ = [
    "ERR_BAD_MESSAGE",
    "ERR_CANCELLED",
    "ERR_FRAME_TOO_LARGE",
    "ERR_HANDLER",
    "ERR_SHUTTING_DOWN",
    "ERR_UNKNOWN_METHOD",
    "BadMessage",
    "IpcProtocolError",
    "Kind",
    "Message",
    "decode_body",
    "encode_body",
    "error_for",
    "sniff_codec",
]


class Kind(str, enum.Enum):
    REQUEST = "request"
    RESPONSE = "response"
    PUSH = "push"
    HEARTBEAT = "heartbeat"
    ERROR = "error"


# Error codes carried in an ``error`` body's data["code"].
ERR_BAD_MESSAGE = "bad_message"  # the body did not decode or is not a valid message
ERR_FRAME_TOO_LARGE = "frame_too_large"  # a frame header announced more than the limit
ERR_UNKNOWN_METHOD = "unknown_method"  # no handler registered under the request's method
ERR_HANDLER = "handler_error"  # the handler raised
ERR_CANCELLED = "cancelled"  # the request was cancelled (by its caller or by shutdown)
ERR_SHUTTING_DOWN = "shutting_down"  # the server is draining and takes no new requests


class IpcProtocolError(ValueError):
    """Bytes from a peer that break the IPC protocol.

    ``code`` is one of the ``ERR_*`` constants; ``id`` / ``method`` are the offending
    message's when they could be read (so an error reply can name them), else ``""``.
    """

    def __init__(self, code: str, message: str, *, id: str = "", method: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.id = id
        self.method = method


class BadMessage(IpcProtocolError):
    """A complete frame whose body is not a valid message; the stream stays in sync."""

    def __init__(self, message: str, *, id: str = "", method: str = "") -> None:
        super().__init__(ERR_BAD_MESSAGE, message, id=id, method=method)


_KINDS = {kind.value: kind for kind in Kind}


@attrs.frozen(slots=True)
class Message:
    """One IPC message. Immutable; build answers with the ``reply_*`` helpers."""

    kind: Kind
    id: str = ""
    method: str = ""
    data: Any = None
    timestamp: float = attrs.field(factory=time.time)

    @classmethod
    def request(cls, id: str, method: str, data: Any = None) -> Message:
        return cls(Kind.REQUEST, id, method, data)

    @classmethod
    def push(cls, method: str, data: Any = None, id: str = "") -> Message:
        return cls(Kind.PUSH, id, method, data)

    @classmethod
    def ping(cls, id: str) -> Message:
        return cls(Kind.HEARTBEAT, id, "ping")

    @classmethod
    def error(cls, id: str, method: str, code: str, message: str) -> Message:
        return cls(Kind.ERROR, id, method, {"code": code, "message": message})

    def reply(self, data: Any = None) -> Message:
        """The ``response`` answering this request."""
        return Message(Kind.RESPONSE, self.id, self.method, data)

    def reply_error(self, code: str, message: str) -> Message:
        """The ``error`` answering this request."""
        return Message.error(self.id, self.method, code, message)

    def pong(self) -> Message:
        """The heartbeat answering this ping."""
        return Message(Kind.HEARTBEAT, self.id, "pong")

    @property
    def is_ping(self) -> bool:
        return self.kind is Kind.HEARTBEAT and self.method != "pong"

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": self.kind._value_,
            "id": self.id,
            "method": self.method,
            "data": self.data,
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_wire(cls, body: Any) -> Message:
        """Validate a decoded body; raises :class:`BadMessage` naming what is wrong."""
        if type(body) is not dict and not isinstance(body, Mapping):
            raise BadMessage(f"a message must be a map/object, not {type(body).__name__}")
        raw_id = body.get("id", "")
        raw_method = body.get("method", "")
        # Read id/method first so that an error reply can refer to them.
        id = raw_id if isinstance(raw_id, str) else ""
        method = raw_method if isinstance(raw_method, str) else ""
        if not isinstance(raw_id, str) and raw_id is not None:
            raise BadMessage(f"'id' must be text, not {type(raw_id).__name__}", method=method)
        if not isinstance(raw_method, str) and raw_method is not None:
            raise BadMessage(f"'method' must be text, not {type(raw_method).__name__}", id=id)
        raw_kind = body.get("kind")
        kind = _KINDS.get(raw_kind) if isinstance(raw_kind, str) else None
        if kind is None:
            raise BadMessage(f"'kind' must be one of {', '.join(_KINDS)}; got {raw_kind!r}"[:200], id=id, method=method)
        timestamp = body.get("timestamp", 0.0)
        if timestamp is None:
            timestamp = 0.0
        if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
            raise BadMessage(f"'timestamp' must be a number, not {type(timestamp).__name__}", id=id, method=method)
        return cls(kind, id, method, body.get("data"), float(timestamp))


_JSON_FIRST = frozenset(b"{ \t\r\n")
# msgpack map markers: fixmap (0x80-0x8f), map16 (0xde), map32 (0xdf).
_MSGPACK_FIRST = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}


def sniff_codec(body: bytes | bytearray | memoryview) -> Codec:
    """The codec a body is written in, from its first byte; :class:`BadMessage` if neither."""
    if len(body) == 0:
        raise BadMessage("empty message body")
    first = body[0]
    if first in _JSON_FIRST:
        return json_codec
    if first in _MSGPACK_FIRST:
        return msgpack_codec
    raise BadMessage(f"body starts with byte 0x{first:02x}: neither a JSON object nor a msgpack map")


def decode_body(body: bytes | bytearray | memoryview, codec: Codec) -> Message:
    """Decode one frame's body with ``codec``. Any bad input raises :class:`BadMessage` only."""
    try:
        obj = codec.decode(body)
    except CodecError as exc:
        raise BadMessage(str(exc)) from None
    return Message.from_wire(obj)


def encode_body(message: Message, codec: Codec) -> bytes:
    """The body bytes of ``message``; :class:`~switchyard.protocols.codec.CodecError` if
    ``data`` holds something the codec cannot carry (e.g. bytes over JSON)."""
    return codec.encode(message.to_wire())


def error_for(exc: IpcProtocolError) -> Message:
    """The ``error`` message telling a peer what was wrong with what it sent."""
    return Message.error(exc.id, exc.method, exc.code, str(exc))
