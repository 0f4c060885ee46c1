"""aipara wire messages: the Rime IME plugin's two ZeroMQ channels, sans-IO.

The peer is the aipara C++/Lua client inside the Rime input method (docs/aipara.md).
Its field names are the wire format and are kept exactly, misspellings included:
requests and replies are keyed by ``messege_type`` and a reply's command list is
``command_messege``.

Two channels:

* **Rime state** (client REQ, 100 ms budget): :func:`parse_rime_request` turns one
  request body into a :class:`StateReport`, :class:`ClientCommand`, :class:`Pong` or,
  for anything malformed, a :class:`BadRequest`. It never raises, so the server can
  always answer exactly one reply: :func:`command_response` or :func:`error_response`,
  both in the ``command_response`` shape the client parses.
* **AI convert/chat** (client DEALER, single-frame requests): :func:`parse_ai_request`
  gives a :class:`ConvertRequest`, :class:`ChatRequest` or :class:`AiBadRequest`;
  replies are built by :class:`ConvertProgress` (cumulative ``convert_result_stream``
  messages), :func:`chat_chunk`, :func:`chat_error` and :func:`ai_error_reply`.

Commands other actors queue for a client (``set_option``, ``set_property``,
``set_config``, ``clipboard_data``, ``paste_executed``, ``paste_failed``, ``ping``) are
the attrs classes of :mod:`switchyard.services.aipara.commands`, re-exported here;
:func:`command_to_wire` renders one for
``command_messege`` and :func:`command_from_dict` validates a plain mapping into one.

Nothing here does I/O; every function is deterministic given its arguments.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from switchyard.protocols.codec import CodecError, json_codec

# the client commands live in their own module; re-exported here
from switchyard.services.aipara.commands import (
    COMMAND_KINDS,
    ClipboardData,
    CommandError,
    OutboxCommand,
    PasteExecuted,
    PasteFailed,
    Ping,
    SetConfig,
    SetOption,
    SetProperty,
    command_from_dict,
    command_to_wire,
)

__all__ = [
    "COMMAND_KINDS",
    "COMMAND_MESSEGE",
    "DEFAULT_MAX_REQUEST_BYTES",
    "MAX_WIRE_INT",
    "MESSEGE_TYPE",
    "AiBadRequest",
    "AiCandidate",
    "AiRequest",
    "BadRequest",
    "ChatRequest",
    "ClientCommand",
    "ClipboardData",
    "CommandError",
    "Commit",
    "ConvertProgress",
    "ConvertRequest",
    "OutboxCommand",
    "PasteExecuted",
    "PasteFailed",
    "Ping",
    "Pong",
    "RimeRequest",
    "SetConfig",
    "SetOption",
    "SetProperty",
    "StateReport",
    "SwitchOption",
    "ai_error_reply",
    "chat_chunk",
    "chat_error",
    "command_from_dict",
    "command_response",
    "command_to_wire",
    "error_response",
    "json_type_name",
    "parse_ai_request",
    "parse_rime_request",
    "response_name",
    "sniff_ai_kind",
]

MESSEGE_TYPE = "messege_type"  # sic: the peer's spelling is the wire format
COMMAND_MESSEGE = "command_messege"  # sic
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024

RIME_KINDS = ("state", "commit", "command")
AI_KINDS = ("convert", "chat")


def json_type_name(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class _Invalid(Exception):
    """Internal: a field failed validation; the message is the client-facing reason."""


def _decode_object(body: bytes | bytearray | memoryview, max_bytes: int) -> dict[str, Any]:
    size = len(body)
    if size > max_bytes:
        raise _Invalid(f"request too large: {size} bytes, limit {max_bytes}")
    if size == 0:
        raise _Invalid("empty request")
    try:
        obj = json_codec.decode(body)
    except CodecError as exc:
        raise _Invalid(f"malformed JSON: {exc}") from None
    except ValueError as exc:  # e.g. an integer literal over Python's 4300-digit limit
        raise _Invalid(f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _Invalid(f"request must be a JSON object, got {json_type_name(obj)}")
    return obj


def _kind(obj: Mapping[str, Any]) -> str | None:
    kind = obj.get(MESSEGE_TYPE)
    if kind is None:
        return None
    if not isinstance(kind, str):
        raise _Invalid(f"'{MESSEGE_TYPE}' must be a string, got {json_type_name(kind)}")
    return kind


def _opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid(f"'{key}' must be a string, got {json_type_name(value)}")
    return value


def _req_str(obj: Mapping[str, Any], key: str) -> str:
    if key not in obj or obj[key] is None:
        raise _Invalid(f"missing '{key}'")
    value = _opt_str(obj, key)
    assert value is not None
    return value


def _opt_bool(obj: Mapping[str, Any], key: str) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _Invalid(f"'{key}' must be a boolean, got {json_type_name(value)}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: Numbers the peers' C++ side can hold: a timestamp or timeout beyond a signed 64-bit
#: integer is refused (also a float such as 1e300, and JSON's 1e400, which parses as inf).
MAX_WIRE_INT = 2**63 - 1


def _in_range_number(obj: Mapping[str, Any], key: str, unit: str) -> int | float | None:
    """``obj[key]`` if it is a finite number within +-:data:`MAX_WIRE_INT`, None if absent."""
    value = obj.get(key)
    if value is None:
        return None
    if not _is_number(value):
        raise _Invalid(f"'{key}' must be a number of {unit}, got {json_type_name(value)}")
    # Compare without converting: float(10**400) raises OverflowError.
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid(f"'{key}' must be a number of {unit}, got {value} (not finite)")
    if not -MAX_WIRE_INT <= value <= MAX_WIRE_INT:
        raise _Invalid(f"'{key}' is out of range: at most {MAX_WIRE_INT} {unit} in magnitude")
    return value


def _opt_timestamp(obj: Mapping[str, Any], key: str = "timestamp") -> int | None:
    """Milliseconds since the epoch; Lua may send it as a float, so accept finite numbers."""
    value = _in_range_number(obj, key, "milliseconds")
    return None if value is None else int(value)


# ---------------------------------------------------------------------------
# Rime state channel: requests


@attrs.frozen
class SwitchOption:
    """One entry of ``switches_option``: a Rime switch and its current state."""

    name: str
    type: str = "simple"
    state: bool = False
    state_index: int = 0


@attrs.frozen
class Commit:
    """What a ``commit`` request adds to a state report: the text the user committed."""

    text: str
    pinyin: str = ""
    current_app: str = ""


@attrs.frozen
class ClientCommand:
    """A command the client asks us to perform (``messege_type: "command"``, e.g. ``paste``),
    either as its own request or embedded in a state report as ``command_message``."""

    command: str
    command_value: str | None = None
    timestamp: int | None = None
    client_id: str | None = None


@attrs.frozen
class StateReport:
    """A ``state`` or ``commit`` request. ``commit`` is set exactly for ``commit``.

    ``is_composing`` is None when the client did not send it. ``properties`` maps a
    property name to its value whether the client sent an object or (newer clients) a
    list of ``{name, type, value}``. Treat the dict as read-only.
    """

    is_composing: bool | None = None
    timestamp: int | None = None
    switches: tuple[SwitchOption, ...] = ()
    properties: dict[str, Any] = attrs.field(factory=dict, hash=False)
    command: ClientCommand | None = None
    commit: Commit | None = None

    @property
    def kind(self) -> str:
        return "commit" if self.commit is not None else "state"


@attrs.frozen
class Pong:
    """The client's answer to a queued ``ping``: it sends ``{"response": "pong"}`` as a
    request of its own (no ``messege_type``), and waits for a reply like any other."""


@attrs.frozen
class BadRequest:
    """A request we could not accept. ``reason`` says why, in words fit for the peer's log.

    The server still answers it (REQ lockstep): with :func:`error_response`, changing
    nothing else.
    """

    reason: str
    messege_type: str | None = None


RimeRequest = StateReport | ClientCommand | Pong | BadRequest


def _parse_switch(item: Any, index: int) -> SwitchOption:
    if not isinstance(item, dict):
        raise _Invalid(f"switches_option[{index}] must be an object, got {json_type_name(item)}")
    try:
        name = _req_str(item, "name")
        kind = _opt_str(item, "type")
        state = _opt_bool(item, "state")
        state_index = item.get("state_index")
        if state_index is not None and (not isinstance(state_index, int) or isinstance(state_index, bool)):
            raise _Invalid(f"'state_index' must be an integer, got {json_type_name(state_index)}")
    except _Invalid as exc:
        raise _Invalid(f"switches_option[{index}]: {exc}") from None
    if state is None:
        state = bool(state_index) if state_index is not None else False
    if state_index is None:
        state_index = int(state)
    return SwitchOption(name=name, type=kind if kind is not None else "simple", state=state, state_index=state_index)


def _parse_properties(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        props: dict[str, Any] = {}
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise _Invalid(f"properties[{index}] must be an object, got {json_type_name(item)}")
            try:
                name = _req_str(item, "name")
            except _Invalid as exc:
                raise _Invalid(f"properties[{index}]: {exc}") from None
            props[name] = item.get("value")
        return props
    raise _Invalid(f"'properties' must be an object or an array, got {json_type_name(value)}")


def _parse_client_command(obj: Mapping[str, Any]) -> ClientCommand:
    return ClientCommand(
        command=_req_str(obj, "command"),
        command_value=_opt_str(obj, "command_value"),
        timestamp=_opt_timestamp(obj),
        client_id=_opt_str(obj, "client_id"),
    )


def _parse_state(obj: Mapping[str, Any], kind: str) -> StateReport:
    switches_raw = obj.get("switches_option")
    if switches_raw is None:
        switches: tuple[SwitchOption, ...] = ()
    elif isinstance(switches_raw, list):
        switches = tuple(_parse_switch(item, i) for i, item in enumerate(switches_raw))
    else:
        raise _Invalid(f"'switches_option' must be an array, got {json_type_name(switches_raw)}")
    embedded = obj.get("command_message")
    command = None
    if embedded is not None:
        if not isinstance(embedded, dict):
            raise _Invalid(f"'command_message' must be an object, got {json_type_name(embedded)}")
        try:
            command = _parse_client_command(embedded)
        except _Invalid as exc:
            raise _Invalid(f"command_message: {exc}") from None
    commit = None
    if kind == "commit":
        commit = Commit(
            text=_opt_str(obj, "commit_text") or "",
            pinyin=_opt_str(obj, "commit_pinyin") or "",
            current_app=_opt_str(obj, "current_app") or "",
        )
    return StateReport(
        is_composing=_opt_bool(obj, "is_composing"),
        timestamp=_opt_timestamp(obj),
        switches=switches,
        properties=_parse_properties(obj.get("properties")),
        command=command,
        commit=commit,
    )


def parse_rime_request(
    body: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES
) -> RimeRequest:
    """Parse one Rime-channel request body. Never raises: bad input is a :class:`BadRequest`.

    Fields are checked for type when present; absent optional fields take defaults, so
    older and newer clients (``properties`` as an object or as a list) both parse.
    """
    kind: str | None = None
    try:
        obj = _decode_object(body, max_bytes)
        kind = _kind(obj)
        if kind is None:
            if obj.get("response") == "pong":
                return Pong()
            raise _Invalid(f"missing '{MESSEGE_TYPE}'")
        if kind in ("state", "commit"):
            return _parse_state(obj, kind)
        if kind == "command":
            return _parse_client_command(obj)
        raise _Invalid(f"unknown {MESSEGE_TYPE} {kind!r}; expected one of: {', '.join(RIME_KINDS)}")
    except _Invalid as exc:
        return BadRequest(reason=str(exc), messege_type=kind)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # a check we missed: still the peer's shape
        return BadRequest(reason=f"invalid request: {type(exc).__name__}: {exc}", messege_type=kind)


def response_name(request: RimeRequest) -> str:
    """The ``response`` field of the reply to ``request``."""
    if isinstance(request, StateReport):
        return "rime_state_received"
    if isinstance(request, ClientCommand):
        return "command_received"
    if isinstance(request, Pong):
        return "pong_received"
    return "error"


def command_response(
    *,
    client_id: str,
    commands: Sequence[Mapping[str, Any]],
    timestamp_ms: int,
    response: str = "rime_state_received",
) -> dict[str, Any]:
    """The reply the client parses: ``command_response`` carrying the drained outbox."""
    return {
        MESSEGE_TYPE: "command_response",
        "response": response,
        "timestamp": timestamp_ms,
        "client_id": client_id,
        COMMAND_MESSEGE: [dict(c) for c in commands],
    }


def error_response(*, client_id: str, reason: str, timestamp_ms: int) -> dict[str, Any]:
    """The reply to a request we could not accept: same shape, no commands, ``error`` set.

    The client only acts on ``command_messege``, so an empty list makes this harmless to
    it while the reason lands in its log.
    """
    reply = command_response(client_id=client_id, commands=(), timestamp_ms=timestamp_ms, response="error")
    reply["error"] = reason
    return reply


# ---------------------------------------------------------------------------
# AI channel: requests


@attrs.frozen
class ConvertRequest:
    """``convert``: turn the typed pinyin into candidates, streamed.

    ``timeout`` is in seconds; None when absent or not positive (the C++ client sends 0
    when it has no timeout configured), meaning "use the server's default".
    """

    confirmed_pos_input: str
    schema_name: str = ""
    shuru_schema: str = ""
    stream_mode: bool = True
    timestamp: int | None = None
    timeout: float | None = None
    candidates_text: tuple[str, ...] = ()


@attrs.frozen
class ChatRequest:
    """``chat``: ask assistant ``assistant_id`` about ``commit_text``; chunks carry
    ``response_key`` back so the client can route them."""

    commit_text: str
    assistant_id: str = ""
    timestamp: int | None = None
    response_key: str | None = None


@attrs.frozen
class AiBadRequest:
    """An AI-channel request we could not accept; answered in the shape its kind expects."""

    reason: str
    messege_type: str | None = None
    response_key: str | None = None


AiRequest = ConvertRequest | ChatRequest | AiBadRequest


def _parse_convert(obj: Mapping[str, Any]) -> ConvertRequest:
    timeout_raw = _in_range_number(obj, "timeout", "seconds")
    timeout = float(timeout_raw) if timeout_raw is not None and timeout_raw > 0 else None
    cands_raw = obj.get("candidates_text")
    if cands_raw is None:
        candidates: tuple[str, ...] = ()
    elif isinstance(cands_raw, list):
        for index, item in enumerate(cands_raw):
            if not isinstance(item, str):
                raise _Invalid(f"candidates_text[{index}] must be a string, got {json_type_name(item)}")
        candidates = tuple(cands_raw)
    else:
        raise _Invalid(f"'candidates_text' must be an array of strings, got {json_type_name(cands_raw)}")
    stream_mode = _opt_bool(obj, "stream_mode")
    return ConvertRequest(
        confirmed_pos_input=_req_str(obj, "confirmed_pos_input"),
        schema_name=_opt_str(obj, "schema_name") or "",
        shuru_schema=_opt_str(obj, "shuru_schema") or "",
        stream_mode=True if stream_mode is None else stream_mode,
        timestamp=_opt_timestamp(obj),
        timeout=timeout,
        candidates_text=candidates,
    )


def _parse_chat(obj: Mapping[str, Any]) -> ChatRequest:
    return ChatRequest(
        commit_text=_req_str(obj, "commit_text"),
        assistant_id=_opt_str(obj, "assistant_id") or "",
        timestamp=_opt_timestamp(obj),
        response_key=_opt_str(obj, "response_key"),
    )


def parse_ai_request(body: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> AiRequest:
    """Parse one AI-channel request body. Never raises: bad input is an :class:`AiBadRequest`."""
    kind: str | None = None
    response_key: str | None = None
    try:
        obj = _decode_object(body, max_bytes)
        raw_key = obj.get("response_key")
        response_key = raw_key if isinstance(raw_key, str) else None
        kind = _kind(obj)
        if kind is None:
            raise _Invalid(f"missing '{MESSEGE_TYPE}'")
        if kind == "convert":
            return _parse_convert(obj)
        if kind == "chat":
            return _parse_chat(obj)
        raise _Invalid(f"unsupported {MESSEGE_TYPE} {kind!r}; this server handles: {', '.join(AI_KINDS)}")
    except _Invalid as exc:
        reason = str(exc)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # a check we missed: still the peer's shape
        reason = f"invalid request: {type(exc).__name__}: {exc}"
    if kind is None:  # not parsed far enough to know: answer in the shape the body names
        kind = sniff_ai_kind(body)
    return AiBadRequest(reason=reason, messege_type=kind, response_key=response_key)


# ---------------------------------------------------------------------------
# AI channel: replies


@attrs.frozen
class AiCandidate:
    """One ``ai_candidates`` entry; ``comment_name`` names the engine that produced it."""

    value: str
    comment_name: str


@attrs.define
class ConvertProgress:
    """The candidates of one convert so far, rendered as cumulative stream messages.

    The client keeps only the newest message it finds waiting (it drains the socket and
    parses the last one), so every message carries everything found so far, never a
    delta. Duplicates are dropped; each list is capped (the caps are explicit limits).
    """

    max_cloud: int = 20
    max_ai: int = 20
    cloud: list[str] = attrs.field(factory=list)
    ai: list[AiCandidate] = attrs.field(factory=list)

    def add_cloud(self, values: Sequence[str]) -> bool:
        """Add word candidates; True if anything new was added."""
        changed = False
        for value in values:
            if value and value not in self.cloud and len(self.cloud) < self.max_cloud:
                self.cloud.append(value)
                changed = True
        return changed

    def add_ai(self, candidates: Sequence[AiCandidate], *, ranked: bool = False) -> bool:
        """Add sentence candidates; True if the list changed.

        With ``ranked=True`` the given list is the best order found so far: it goes
        first (replacing earlier entries with the same value) and the rest follow.
        """
        before = list(self.ai)
        if ranked:
            front: list[AiCandidate] = []
            seen: set[str] = set()
            for cand in candidates:
                if cand.value and cand.value not in seen:
                    front.append(cand)
                    seen.add(cand.value)
            self.ai = (front + [c for c in self.ai if c.value not in seen])[: self.max_ai]
            return self.ai != before
        seen = {c.value for c in self.ai}
        for cand in candidates:
            if cand.value and cand.value not in seen and len(self.ai) < self.max_ai:
                self.ai.append(cand)
                seen.add(cand.value)
        return self.ai != before

    def message(
        self,
        *,
        is_final: bool,
        is_timeout: bool = False,
        error: str | None = None,
    ) -> dict[str, Any]:
        """One ``convert_result_stream`` message with all candidates so far.

        ``is_partial`` is the opposite of ``is_final``; an ``error`` makes ``is_error``
        true and is carried as text in ``error``.
        """
        msg: dict[str, Any] = {
            MESSEGE_TYPE: "convert_result_stream",
            "cloud_candidates": [{"value": v} for v in self.cloud],
            "ai_candidates": [{"value": c.value, "comment_name": c.comment_name} for c in self.ai],
            "is_final": is_final,
            "is_partial": not is_final,
            "is_timeout": is_timeout,
            "is_error": error is not None,
        }
        if error is not None:
            msg["error"] = error
        return msg


def chat_chunk(*, content: str, response_key: str | None, is_final: bool) -> dict[str, Any]:
    """One streamed chat message: a text chunk (may be empty on the final one)."""
    msg: dict[str, Any] = {
        MESSEGE_TYPE: "chat_result",
        "content": content,
        "is_final": is_final,
    }
    if response_key is not None:
        msg["response_key"] = response_key
    return msg


def chat_error(*, reason: str, response_key: str | None) -> dict[str, Any]:
    """The final chat message on failure, marked every way the client recognises:
    ``error`` (string), ``error_msg``, and ``status: "error"`` with ``data.message``."""
    msg = chat_chunk(content="", response_key=response_key, is_final=True)
    msg.update({"error": reason, "error_msg": reason, "status": "error", "data": {"message": reason}})
    return msg


_KIND_SNIFF = re.compile(rb'"messege_type"\s*:\s*"(convert|chat)"')


def sniff_ai_kind(body: bytes | bytearray | memoryview, *, window: int = 64 * 1024) -> str | None:
    """The request kind named in the first ``window`` bytes of a body too large (or too
    broken) to parse, so even its error reply has the shape its kind expects."""
    match = _KIND_SNIFF.search(bytes(body[:window]))
    return match.group(1).decode() if match else None


def ai_error_reply(bad: AiBadRequest) -> dict[str, Any]:
    """The one reply to a bad AI-channel request, in the shape its kind would get."""
    if bad.messege_type == "convert":
        return ConvertProgress().message(is_final=True, error=bad.reason)
    if bad.messege_type == "chat":
        return chat_error(reason=bad.reason, response_key=bad.response_key)
    return {
        MESSEGE_TYPE: "error",
        "status": "error",
        "is_final": True,
        "error": bad.reason,
        "error_msg": bad.reason,
        "data": {"message": bad.reason},
    }
