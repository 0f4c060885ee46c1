"""Queue task messages of the meeting system and the events they yield.

What a caller may rely on:

* :func:`parse_task` reads one raw queue entry: JSON ``{"id", "type": "ai.<task_type>",
  "priority", "payload": {...}, "retry_count", "created_at"}`` with keys in any case
  and either spelling a Go struct may give (``Type``, ``TaskID``, ``task_id``); the
  payload's input is base64 (or a list of byte values) in ``input_data``,
  ``audio_data`` or ``video_frame``. A message that is not such JSON raises
  :class:`PoisonTask` (the worker dead-letters it at once, never retries it).
* Ids in the payload (keys ending ``_id``: ``meeting_id``, ``user_id``) keep their JSON
  type in the event: numbers stay numbers.
* :func:`with_retry` re-encodes a task with ``retry_count`` one higher, every other
  key untouched.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

import attrs

from switchyard.services.inference.protocol import TaskReply, task_event

__all__ = ["PoisonTask", "QueueTask", "dead_letter_entry", "event_json", "parse_task", "snake", "with_retry"]

_INPUT_KEYS = ("input_data", "audio_data", "video_frame")
_PARAM_KEYS = ("format", "sample_rate", "threshold", "language", "channels")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


class PoisonTask(ValueError):
    """A queue entry no worker can ever run; ``str(exc)`` goes into the dead letter."""

    def __init__(self, message: str, *, task_id: str = "", task_type: str = "") -> None:
        super().__init__(message)
        self.task_id = task_id
        self.task_type = task_type


def snake(key: str) -> str:
    """``TaskID`` -> ``task_id``, ``MeetingId`` -> ``meeting_id``, ``task_id`` unchanged."""
    return _CAMEL.sub("_", key).lower()


@attrs.frozen
class QueueTask:
    """One parsed queue entry."""

    raw: bytes
    doc: dict[str, Any]
    id: str
    task_type: str
    model: str
    input_data: bytes
    params: dict[str, str]
    ids: dict[str, Any]
    retry_count: int


def _lower_keys(value: Any) -> dict[str, Any]:
    return {snake(str(k)): v for k, v in value.items()} if isinstance(value, dict) else {}


def _decode_input(value: Any, max_bytes: int) -> bytes:
    if value is None or value == "":
        return b""
    if isinstance(value, str):
        if len(value) > (max_bytes * 4) // 3 + 8:
            raise ValueError(f"input is over max_input_bytes ({max_bytes})")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("input is not valid base64") from None
    if isinstance(value, list):
        if len(value) > max_bytes:
            raise ValueError(f"input is over max_input_bytes ({max_bytes})")
        try:
            return bytes(value)
        except (TypeError, ValueError):
            raise ValueError("input list must hold byte values 0..255") from None
    raise ValueError(f"input must be base64 text or a list of bytes, not {type(value).__name__}")


def parse_task(raw: bytes, *, max_input_bytes: int = 16 << 20) -> QueueTask:
    """The task in ``raw``; :class:`PoisonTask` when it cannot be one."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoisonTask(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PoisonTask(f"a task is a JSON object, not {type(doc).__name__}")
    top = _lower_keys(doc)
    payload = _lower_keys(top.get("payload"))
    task_id = str(payload.get("task_id") or top.get("id") or "") or hashlib.sha1(raw).hexdigest()[:16]
    kind = top.get("type")
    if not isinstance(kind, str) or not kind:
        raise PoisonTask("task has no type", task_id=task_id)
    task_type = kind[3:] if kind.startswith("ai.") else kind
    try:
        retry_count = int(top.get("retry_count") or 0)
    except (TypeError, ValueError):
        retry_count = 0
    raw_input = next((payload[k] for k in _INPUT_KEYS if payload.get(k) not in (None, "")), None)
    try:
        data = _decode_input(raw_input, max_input_bytes)
    except ValueError as exc:
        raise PoisonTask(str(exc), task_id=task_id, task_type=task_type) from None
    params = {str(k): str(v) for k, v in _lower_keys(payload.get("params")).items()}
    for key in _PARAM_KEYS:
        if key in payload and key not in params and isinstance(payload[key], (str, int, float)):
            params[key] = str(payload[key])
    ids = {k: v for k, v in payload.items() if k.endswith("_id") and k != "task_id"}
    model = payload.get("model") or payload.get("model_path") or ""
    return QueueTask(
        raw=raw,
        doc=doc,
        id=str(top.get("id") or task_id),
        task_type=task_type,
        model=str(model),
        input_data=data,
        params=params,
        ids=ids,
        retry_count=retry_count,
    )


def with_retry(task: QueueTask) -> bytes:
    """The task re-encoded with its retry count one higher (its own key spelling kept)."""
    doc = dict(task.doc)
    key = next((k for k in doc if snake(k) == "retry_count"), "retry_count")
    doc[key] = task.retry_count + 1
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def event_json(task_type: str, reply: TaskReply, ids: Mapping[str, Any]) -> bytes:
    """The ``ai_events`` message for a finished task: ``{"type", "payload"}``."""
    event = task_event(task_type, reply, {})
    payload = dict(event.payload)
    for key, value in ids.items():
        payload.setdefault(key, value)
    return json.dumps({"type": event.type, "payload": payload}, separators=(",", ":"), ensure_ascii=False).encode()


def dead_letter_entry(raw: bytes, error: str, queue: str, retry_count: int, stamp: str) -> bytes:
    """The ``dead_letter_queue`` entry: the task (parsed when it is JSON), its error and where it came from."""
    try:
        task: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        task = raw.decode("utf-8", "replace")
    entry = {"task": task, "error": error, "queue": queue, "retry_count": retry_count, "failed_at": stamp}
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode()
