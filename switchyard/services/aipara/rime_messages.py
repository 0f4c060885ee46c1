"""aipara Rime-state channel (client REQ, 100 ms budget): requests and replies, sans-IO.

:func:`parse_rime_request` turns one request body into a :class:`StateReport`,
:class:`ClientCommand`, :class:`Pong` or, for anything malformed, a :class:`BadRequest`.
It never raises, so the server can always answer exactly one reply:
:func:`command_response` or :func:`error_response`, both in the ``command_response``
shape the client parses. Field names are the peer's (docs/aipara.md), typos included.

The server's hot path is :func:`read_rime_request`: the same parse, except that a
plain ``state`` request (the one the client sends on every keystroke) comes back as a
:data:`QuickState` tuple of checked fields instead of attrs objects, and
:func:`encode_command_response` writes a reply's bytes without building its dict.

Nothing here does I/O; every function is deterministic given its arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from switchyard.protocols.codec import json_codec
from switchyard.services.aipara.wire import (
    COMMAND_MESSEGE,
    DEFAULT_MAX_REQUEST_BYTES,
    MAX_WIRE_INT,
    MESSEGE_TYPE,
    _decode_object,
    _Invalid,
    _kind,
    _opt_bool,
    _opt_str,
    _opt_timestamp,
    _req_str,
    json_type_name,
)

__all__ = [
    "BadRequest",
    "ClientCommand",
    "Commit",
    "Pong",
    "QuickState",
    "RimeRequest",
    "StateReport",
    "SwitchOption",
    "command_response",
    "encode_command_response",
    "error_response",
    "parse_rime_object",
    "parse_rime_request",
    "read_rime_request",
    "response_name",
]

RIME_KINDS = ("state", "commit", "command")


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
    try:
        obj = _decode_object(body, max_bytes)
    except _Invalid as exc:
        return BadRequest(reason=str(exc))
    return parse_rime_object(obj)


def parse_rime_object(obj: dict[str, Any]) -> RimeRequest:
    """:func:`parse_rime_request` for a body already decoded into a JSON object. Never raises."""
    kind: str | None = None
    try:
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


#: A plain ``state`` request's checked fields, as :func:`read_rime_request` gives them:
#: ``(is_composing, timestamp, switches, properties)`` with each switch as
#: ``(name, type, state, state_index)`` and ``properties`` None when absent or empty.
#: The values are the ones :func:`parse_rime_request` puts in its :class:`StateReport`.
QuickState = tuple[bool | None, int | None, tuple[tuple[str, str, bool, int], ...], dict[str, Any] | None]


def read_rime_request(
    body: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES
) -> QuickState | RimeRequest:
    """:func:`parse_rime_request`, except that a plain ``state`` request is a :data:`QuickState`.

    "Plain" means kind ``state``, no ``command_message``, and every field of the type
    the client sends; anything else (other kinds, any field in doubt, every error)
    goes through :func:`parse_rime_object`, so what is accepted, the values and every
    error reason are exactly :func:`parse_rime_request`'s. Never raises.
    """
    try:
        obj = _decode_object(body, max_bytes)
    except _Invalid as exc:
        return BadRequest(reason=str(exc))
    quick = _quick_state(obj)
    return quick if quick is not None else parse_rime_object(obj)


def _quick_state(obj: dict[str, Any]) -> QuickState | None:
    # Only ever accepts a subset of what _parse_state accepts, with its values (exact
    # types, so True is never taken for an integer); None sends obj the full way.
    if obj.get(MESSEGE_TYPE) != "state" or obj.get("command_message") is not None:
        return None
    composing = obj.get("is_composing")
    if composing is not None and type(composing) is not bool:
        return None
    stamp = obj.get("timestamp")
    if stamp is not None:
        if type(stamp) is float:
            if not -MAX_WIRE_INT <= stamp <= MAX_WIRE_INT:  # also refuses inf and nan
                return None
            stamp = int(stamp)
        elif type(stamp) is not int or not -MAX_WIRE_INT <= stamp <= MAX_WIRE_INT:
            return None
    raw = obj.get("switches_option")
    switches: tuple[tuple[str, str, bool, int], ...] = ()
    if raw is not None:
        if type(raw) is not list:
            return None
        parsed = []
        for item in raw:
            if type(item) is not dict:
                return None
            name = item.get("name")
            kind = item.get("type", "simple")
            state = item.get("state")
            index = item.get("state_index")
            if type(name) is not str:
                return None
            if kind is None:
                kind = "simple"
            elif type(kind) is not str:
                return None
            if index is None:
                if state is None:
                    state = False
                elif type(state) is not bool:
                    return None
                index = int(state)
            elif type(index) is not int:
                return None
            elif state is None:
                state = bool(index)
            elif type(state) is not bool:
                return None
            parsed.append((name, kind, state, index))
        switches = tuple(parsed)
    props = obj.get("properties")
    if props is not None:
        if type(props) is list:
            listed: dict[str, Any] = {}
            for item in props:
                if type(item) is not dict:
                    return None
                name = item.get("name")
                if type(name) is not str:
                    return None
                listed[name] = item.get("value")
            props = listed
        elif type(props) is not dict:
            return None
    return composing, stamp, switches, props or None


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


_REPLY_HEAD = {
    name: b'{"%s":"command_response","response":"%s","timestamp":' % (MESSEGE_TYPE.encode(), name.encode())
    for name in ("rime_state_received", "command_received", "pong_received", "error")
}
_REPLY_LIST = b',"%s":' % COMMAND_MESSEGE.encode()


def encode_command_response(
    client_json: bytes, commands: Sequence[Mapping[str, Any]], timestamp_ms: int, response: str
) -> bytes:
    """``json_codec.encode(command_response(...))``, byte for byte, without building the dict.

    ``client_json`` is ``json_codec.encode(client_id)``, which a server can keep per
    client. Raises :class:`~switchyard.protocols.codec.CodecError` as that encode would.
    """
    head = _REPLY_HEAD.get(response)
    if head is None or type(timestamp_ms) is not int:  # not one of ours: the plain way
        return json_codec.encode(
            command_response(
                client_id=json_codec.decode(client_json),
                commands=commands,
                timestamp_ms=timestamp_ms,
                response=response,
            )
        )
    listed = json_codec.encode(list(commands)) if commands else b"[]"
    return b'%s%d,"client_id":%s%s%s}' % (head, timestamp_ms, client_json, _REPLY_LIST, listed)


def error_response(*, client_id: str, reason: str, timestamp_ms: int) -> dict[str, Any]:
    """The reply to a request we could not accept: same shape, no commands, ``error`` set.

    The client only acts on ``command_messege``, so an empty list makes this harmless to
    it while the reason lands in its log.
    """
    reply = command_response(client_id=client_id, commands=(), timestamp_ms=timestamp_ms, response="error")
    reply["error"] = reason
    return reply
