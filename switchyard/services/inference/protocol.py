"""The inference task protocol of the meeting system (docs/inference.md), sans-IO.

Request, one JSON frame (a Go ``AITask`` marshalled by ``encoding/json``)::

    {"task_id": "…", "task_type": "digit_recognition", "model_path": "/models/x.onnx",
     "input_data": "<base64>" | [byte, …], "params": {"key": "value"}}

``input_data`` is a base64 string (standard alphabet, padded: what Go writes for a
``[]byte``) or an array of byte values 0..255 (what the meeting system's C++ server reads);
``null`` is an empty input, as Go writes a nil slice. ``params`` values are strings;
``null`` means none. Unknown keys are ignored.

Reply, one JSON frame, always all five keys::

    {"task_id": "…", "status": "success" | "error", "result": {…}, "error": "…",
     "latency": <whole milliseconds, int>}

Events, published after each task on a PUB socket as two frames
``[b"ai_events", json]`` where the JSON is
``{"type": "<task_type>.completed" | "<task_type>.failed", "payload": {…}}``
(see :func:`task_event` for the payload fields).

Parsing never raises anything but :class:`TaskError`, whose ``task_id`` is whatever
could be read from the body, so the caller can always answer in the peer's format.
"""

from __future__ import annotations

import binascii
import datetime as _dt
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

from switchyard.protocols.codec import Codec, CodecError, json_codec

__all__ = [
    "DEFAULT_MAX_INPUT_BYTES",
    "EVENT_TOPIC",
    "MAX_TASK_ID_LENGTH",
    "TaskError",
    "TaskEvent",
    "TaskReply",
    "TaskRequest",
    "encode_event",
    "encode_reply",
    "encode_request",
    "error_reply_bytes",
    "parse_event",
    "parse_reply",
    "parse_request",
    "peek_task_id",
    "sniff_task_id",
    "task_event",
]

EVENT_TOPIC = b"ai_events"
DEFAULT_MAX_INPUT_BYTES = 16 << 20
MAX_TASK_ID_LENGTH = 1024

Status = Literal["success", "error"]


class TaskError(ValueError):
    """A request that cannot be served; ``str(exc)`` is the message for the peer.

    ``task_id`` and ``task_type`` are whatever could be read before the problem
    (``""`` if nothing), so a reply and a ``.failed`` event can still name them.
    """

    def __init__(self, message: str, task_id: str = "", task_type: str = "") -> None:
        super().__init__(message)
        self.task_id = task_id
        self.task_type = task_type


@attrs.frozen
class TaskRequest:
    """A validated task. ``input_data`` is the decoded bytes, whichever shape carried them."""

    task_id: str
    task_type: str
    model_path: str = ""
    input_data: bytes = b""
    params: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class TaskReply:
    """One reply. ``latency`` is whole milliseconds, as the Go ``int64`` field expects."""

    task_id: str
    status: Status
    result: Mapping[str, Any] = attrs.field(factory=dict)
    error: str = ""
    latency: int = 0

    @classmethod
    def success(cls, task_id: str, result: Mapping[str, Any], latency_ms: int) -> TaskReply:
        return cls(task_id=task_id, status="success", result=result, latency=latency_ms)

    @classmethod
    def failure(cls, task_id: str, error: str, latency_ms: int = 0) -> TaskReply:
        return cls(task_id=task_id, status="error", error=error, latency=latency_ms)

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def as_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "status": self.status,
            "result": dict(self.result),
            "error": self.error,
            "latency": self.latency,
        }


def _decode_input(value: object, task_id: str, max_input_bytes: int) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        # base64 inflates by 4/3: refuse before decoding what cannot fit anyway
        if len(value) > (max_input_bytes + 2) // 3 * 4:
            raise TaskError(f"input_data exceeds the limit of {max_input_bytes} bytes", task_id)
        pad = value.find("=")
        if len(value) % 4 or (pad != -1 and pad < len(value) - 2):
            # strict_mode alone lets through surplus padding ("QUJD=") that Go rejects
            raise TaskError("input_data is a string but not valid base64: bad length or padding", task_id)
        try:
            return binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
        except UnicodeEncodeError:
            raise TaskError("input_data is a string but not base64 (non-ASCII characters)", task_id) from None
        except binascii.Error as exc:
            raise TaskError(f"input_data is a string but not valid base64: {exc}", task_id) from None
    if isinstance(value, list):
        if len(value) > max_input_bytes:
            raise TaskError(f"input_data exceeds the limit of {max_input_bytes} bytes", task_id)
        try:
            data = bytes(value)
        except (TypeError, ValueError):
            data = None
        if data is None or any(v is True or v is False for v in value):
            raise TaskError("input_data array must hold integers 0..255 only", task_id)
        return data
    raise TaskError(
        f"input_data must be a base64 string or an array of byte values, not {_json_type(value)}",
        task_id,
    )


def _json_type(value: object) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _require_str(obj: Mapping[str, Any], key: str, task_id: str, *, optional: bool = False) -> str:
    value = obj.get(key)
    if value is None and optional:
        return ""
    if value is None:
        raise TaskError(f"{key} is missing", task_id)
    if not isinstance(value, str):
        raise TaskError(f"{key} must be a string, not {_json_type(value)}", task_id)
    return value


def _parse_params(value: object, task_id: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TaskError(f"params must be an object of strings, not {_json_type(value)}", task_id)
    for key, item in value.items():
        if not isinstance(item, str):
            raise TaskError(f"params.{key} must be a string, not {_json_type(item)}", task_id)
    return value


def peek_task_id(obj: object) -> str:
    """The ``task_id`` of a decoded body if it is a usable string, else ``""``."""
    if isinstance(obj, dict):
        value = obj.get("task_id")
        if isinstance(value, str) and len(value) <= MAX_TASK_ID_LENGTH:
            return value
    return ""


_LEADING_TASK_ID = re.compile(rb'\A\s*\{\s*"task_id"\s*:\s*("(?:[^"\\\x00-\x1f]|\\.){0,1024}")')


def sniff_task_id(body: bytes | bytearray | memoryview) -> str:
    """The task id of a request *without parsing it*, if the body starts with it (Go's
    field order does); ``""`` otherwise. For replies to bodies too big or too many to parse."""
    match = _LEADING_TASK_ID.match(memoryview(body)[:2048].tobytes())
    if match is None:
        return ""
    try:
        value = json_codec.decode(match.group(1))
    except CodecError:
        return ""
    return value if isinstance(value, str) else ""


def parse_request(
    body: bytes | bytearray | memoryview, *, max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
) -> TaskRequest:
    """Validate one JSON request frame into a :class:`TaskRequest`.

    Raises :class:`TaskError` (carrying the task id when one could be read) for
    anything else: bytes that are not UTF-8 JSON, a non-object, missing or mistyped
    fields, bad base64, byte values out of range, input over ``max_input_bytes``.
    """
    try:
        obj = json_codec.decode(body)
    except CodecError as exc:
        raise TaskError(f"request is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise TaskError(f"request must be a JSON object, not {_json_type(obj)}")
    task_id = peek_task_id(obj)
    raw_id = obj.get("task_id")
    if raw_id is None:
        raise TaskError("task_id is missing")
    if not isinstance(raw_id, str):
        raise TaskError(f"task_id must be a string, not {_json_type(raw_id)}")
    if len(raw_id) > MAX_TASK_ID_LENGTH:
        raise TaskError(f"task_id is longer than {MAX_TASK_ID_LENGTH} characters")
    task_type = _require_str(obj, "task_type", task_id)
    if not task_type:
        raise TaskError("task_type is empty", task_id)
    try:
        model_path = _require_str(obj, "model_path", task_id, optional=True)
        input_data = _decode_input(obj.get("input_data"), task_id, max_input_bytes)
        if len(input_data) > max_input_bytes:
            raise TaskError(f"input_data exceeds the limit of {max_input_bytes} bytes", task_id)
        params = _parse_params(obj.get("params"), task_id)
    except TaskError as exc:
        exc.task_type = task_type
        raise
    return TaskRequest(
        task_id=task_id, task_type=task_type, model_path=model_path, input_data=input_data, params=params
    )


# Go's encoding/json escapes these even inside strings; doing the same makes
# encode_request byte-identical to what the Go client sends.
_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def encode_request(request: TaskRequest, *, byte_array: bool = False) -> bytes:
    """Client side: the request as the Go service marshals it (field order, base64,
    sorted params, HTML-safe escapes), or with ``byte_array=True`` as an array of
    byte values like the meeting system's C++ peer."""
    data: Any
    if byte_array:
        data = list(request.input_data)
    else:
        data = binascii.b2a_base64(request.input_data, newline=False).decode("ascii")
    obj = {
        "task_id": request.task_id,
        "task_type": request.task_type,
        "model_path": request.model_path,
        "input_data": data,
        "params": dict(sorted(request.params.items())) if request.params else None,
    }
    text = json_codec.encode(obj).decode("utf-8")
    return text.translate(_GO_ESCAPES).encode("utf-8")


def encode_reply(reply: TaskReply, codec: Codec = json_codec) -> bytes:
    """The reply frame (JSON; the binary form passes ``msgpack_codec``). A result the
    codec cannot carry becomes an ``error`` reply saying so."""
    try:
        return codec.encode(reply.as_dict())
    except CodecError as exc:
        fallback = TaskReply.failure(reply.task_id, f"result could not be encoded: {exc}", reply.latency)
        return codec.encode(fallback.as_dict())


def error_reply_bytes(message: str, task_id: str = "", latency_ms: int = 0) -> bytes:
    """An ``error`` reply frame, for callers that have no parsed request."""
    return encode_reply(TaskReply.failure(task_id, message, latency_ms))


def parse_reply(body: bytes | bytearray | memoryview) -> TaskReply:
    """Client side: validate a reply frame. Raises :class:`TaskError` if malformed."""
    try:
        obj = json_codec.decode(body)
    except CodecError as exc:
        raise TaskError(f"reply is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise TaskError("reply must be a JSON object")
    task_id = peek_task_id(obj)
    status = obj.get("status")
    if status not in ("success", "error"):
        raise TaskError(f"reply status {status!r} is not 'success' or 'error'", task_id)
    result = obj.get("result") or {}
    error = obj.get("error") or ""
    latency = obj.get("latency", 0)
    if not isinstance(result, dict) or not isinstance(error, str):
        raise TaskError("reply result must be an object and error a string", task_id)
    if not isinstance(latency, int) or isinstance(latency, bool) or latency < 0:
        raise TaskError(f"reply latency {latency!r} is not a whole number of milliseconds", task_id)
    return TaskReply(task_id=task_id, status=status, result=result, error=error, latency=latency)


@attrs.frozen
class TaskEvent:
    """One ``ai_events`` message: ``type`` is ``"<task_type>.completed"`` or ``".failed"``."""

    type: str
    payload: Mapping[str, Any]


_RESERVED = frozenset({"task_id", "task_type", "status", "error", "latency", "timestamp"})


_stamp_cache: list[Any] = [None, ""]


def _utc_stamp(now: _dt.datetime | None) -> str:
    """``2025-01-09T10:05:00Z``; formatted once per second (this runs for every task)."""
    if now is not None:
        return now.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    second = int(time.time())
    if _stamp_cache[0] != second:
        moment = _dt.datetime.fromtimestamp(second, _dt.UTC)
        _stamp_cache[:] = [second, moment.strftime("%Y-%m-%dT%H:%M:%SZ")]
    return _stamp_cache[1]


def task_event(
    task_type: str,
    reply: TaskReply,
    params: Mapping[str, str] | None = None,
    *,
    now: _dt.datetime | None = None,
) -> TaskEvent:
    """The event for a finished task, shaped like the meeting system's ``ai_events`` messages.

    Payload: ``task_id``, ``task_type``, ``status``, the result's fields at top level
    (``label``, ``confidence``, …; they never replace the fixed keys), the request's
    id params (keys ending in ``_id`` such as ``meeting_id``, ``user_id``, as the
    strings they arrived as), ``latency`` (ms), ``error`` for failures and
    ``timestamp`` (UTC, ``2025-01-09T10:05:00Z``; ``now`` fixes it for tests).
    """
    stamp = _utc_stamp(now)
    payload: dict[str, Any] = {"task_id": reply.task_id, "task_type": task_type, "status": reply.status}
    for key, value in (params or {}).items():
        if key.endswith("_id") and key not in _RESERVED:
            payload[key] = value
    for key, value in reply.result.items():
        if key not in _RESERVED:
            payload[key] = value
    if not reply.ok:
        payload["error"] = reply.error
    payload["latency"] = reply.latency
    payload["timestamp"] = stamp
    suffix = "completed" if reply.ok else "failed"
    return TaskEvent(type=f"{task_type}.{suffix}", payload=payload)


def encode_event(event: TaskEvent, topic: bytes = EVENT_TOPIC) -> list[bytes]:
    """PUB frames ``[topic, json]``; a payload that cannot be JSON keeps only its fixed keys."""
    try:
        body = json_codec.encode({"type": event.type, "payload": dict(event.payload)})
    except CodecError:
        fixed = {k: v for k, v in event.payload.items() if k in _RESERVED}
        body = json_codec.encode({"type": event.type, "payload": fixed})
    return [topic, body]


def parse_event(frames: Sequence[bytes | bytearray | memoryview]) -> tuple[bytes, TaskEvent]:
    """Subscriber side: ``(topic, event)`` from PUB frames. Raises :class:`TaskError`."""
    if len(frames) != 2:
        raise TaskError(f"an event has 2 frames, not {len(frames)}")
    try:
        obj = json_codec.decode(frames[1])
    except CodecError as exc:
        raise TaskError(f"event is not valid JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str) or not isinstance(obj.get("payload"), dict):
        raise TaskError("event must be an object with a string type and an object payload")
    return bytes(frames[0]), TaskEvent(type=obj["type"], payload=obj["payload"])
