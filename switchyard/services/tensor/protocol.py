"""The tensor-session command protocol, shared by the file and ZeroMQ transports (sans-IO).

A request is a command name and a text parameter (``{"cmd": "matmul", "params":
"a,b"}``); tensor inputs are named by tags listed in the parameter, comma-separated.
A command answers with zero or more responses (``cmd`` and text); tensor results are
tagged ``r`` (one) or ``r0``, ``r1``, ... (several) and their tags are the response
text, comma-separated.

**File form** (Tech Renaissance's ``PythonSession``): :func:`parse_request` reads the
body of ``request.json``; :func:`render_response` writes ``response.json`` so that
both a JSON parser and the C++ client's naive ``"params":`` scan get the text.

**ZeroMQ form**: a message is a JSON header frame followed by two frames per tensor,
the 64-byte TSR header and the raw data (see :mod:`switchyard.services.tensor.tsr`)::

    request   {"id": 7, "cmd": "matmul", "params": "a,b", "tensors": ["a", "b"]}  hdr data hdr data
    response  {"id": 7, "kind": "response", "cmd": "", "params": "r", "tensors": ["r"], "status": "ok"}  hdr data
    done      {"id": 7, "kind": "done", "status": "error:<message>"}

A request ends with exactly one message carrying ``status`` (``"ok"`` or
``"error:<message>"``): its last response, or a ``done`` when it has no response to
carry it (no response at all, or a failure after the last one). Responses before
the last have no ``status``. Decoders raise only
:class:`SessionProtocolError` or :class:`~switchyard.services.tensor.tsr.TSRError` (both
``ValueError``), whatever the bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from switchyard.protocols.codec import CodecError, json_codec
from switchyard.services.tensor.tsr import TSRError, decode_frames, encode_frames

__all__ = [
    "MAX_TENSORS",
    "Done",
    "Reply",
    "Request",
    "Response",
    "SessionProtocolError",
    "decode_reply",
    "decode_request",
    "encode_done",
    "encode_request",
    "encode_response",
    "error_status",
    "extract_params",
    "failed_command_status",
    "parse_request",
    "render_request",
    "render_response",
    "request_id_of",
    "response_text",
    "result_tags",
    "split_tags",
]

#: Upper bound on tensors in one ZeroMQ message.
MAX_TENSORS = 64

_MISSING: Any = object()


class SessionProtocolError(ValueError):
    """A request or reply that does not follow the tensor-session protocol."""


@attrs.frozen
class Request:
    """One command: ``cmd`` and its text parameter (tags for tensor inputs)."""

    cmd: str
    params: str = ""


# --------------------------------------------------------------------- file form


def parse_request(raw: bytes | bytearray | memoryview) -> Request:
    """The request in a ``request.json`` body.

    Accepted: ``{"cmd": ..., "params": ...}`` (what the C++ client writes),
    ``{"command": ..., "parameters": ...}`` (Tech Renaissance's documented form) and plain
    text ``"<cmd> <params>"`` (what ``send_request("hello world")`` writes). A
    missing ``params`` is ``""``; non-string values are an error.
    """
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SessionProtocolError(f"request is not UTF-8 (byte {exc.start})") from None
    stripped = text.strip()
    if not stripped:
        raise SessionProtocolError("empty request")
    if stripped.startswith("{"):
        try:
            body = json_codec.decode(stripped.encode("utf-8"))
        except CodecError as exc:
            raise SessionProtocolError(f"request: {exc}") from None
        if not isinstance(body, dict):
            raise SessionProtocolError("request JSON is not an object")
        cmd = body.get("cmd", body.get("command"))
        params = body.get("params", body.get("parameters", ""))
        if not isinstance(cmd, str) or not cmd:
            raise SessionProtocolError('request has no "cmd" string')
        if params is None:
            params = ""
        if not isinstance(params, str):
            raise SessionProtocolError(f'request "params" must be a string, got {type(params).__name__}')
        return Request(cmd, params)
    cmd, _, params = stripped.partition(" ")
    return Request(cmd, params.strip())


def render_response(cmd: str, params: str) -> bytes:
    """The ``response.json`` body: ``{"cmd": "<cmd>", "params": "<params>"}``.

    Valid JSON, UTF-8, non-ASCII kept. Backslashes are written ``\\u005c`` so that no
    backslash ever stands right before a closing quote: the C++ client's naive scan
    (value up to the next quote not preceded by a backslash) then always finds the
    end of the value, and plain text reaches it unchanged.
    """
    return f'{{"cmd": {_scan_safe(cmd)}, "params": {_scan_safe(params)}}}'.encode()


def render_request(msg: str | Mapping[str, Any]) -> bytes:
    """A ``request.json`` body: a str as is (JSON or plain ``"<cmd> <params>"``), a
    mapping JSON-encoded (UTF-8, non-ASCII kept). Raises SessionProtocolError for a
    mapping that is not JSON."""
    if isinstance(msg, str):
        return msg.encode("utf-8")
    try:
        return json_codec.encode(dict(msg))
    except CodecError as exc:
        raise SessionProtocolError(f"request: {exc}") from None


def response_text(body: bytes | bytearray | memoryview) -> str:
    """The text a client reads from a ``response.json`` body: its ``params`` when the
    body is a JSON object, else the C++ client's naive scan (:func:`extract_params`),
    so a server writing unescaped text is read as the C++ client reads it."""
    try:
        decoded = json_codec.decode(body)
    except CodecError:
        return extract_params(bytes(body).decode("utf-8", errors="replace"))
    if not isinstance(decoded, dict):
        return extract_params(bytes(body).decode("utf-8", errors="replace"))
    params = decoded.get("params", "")
    return params if isinstance(params, str) else str(params)


def _scan_safe(text: str) -> str:
    # json.dumps escapes every backslash as a pair; each pair starts an escape, so a
    # left-to-right replace only ever matches whole escaped-backslash pairs.
    return json.dumps(text, ensure_ascii=False).replace("\\\\", "\\u005c")


def extract_params(body: str) -> str:
    """The C++ client's reading of a response: the text after ``"params":`` up to
    the next quote not preceded by a backslash, escapes left as they are."""
    key = '"params":'
    pos = body.find(key)
    if pos < 0:
        return ""
    start = body.find('"', pos + len(key))
    if start < 0:
        return ""
    end = start + 1
    while end < len(body) and not (body[end] == '"' and body[end - 1] != "\\"):
        end += 1
    return body[start + 1 : end]


def split_tags(params: str) -> list[str]:
    """Tensor tags named in ``params``: comma- (or whitespace-) separated.

    A tag becomes a file name ``<tag>.tsr``, so path separators, NUL, ``.``-leading
    and empty tags are refused.
    """
    tags = [tag for tag in params.replace(",", " ").split() if tag]
    for tag in tags:
        if "/" in tag or "\\" in tag or "\0" in tag or tag.startswith("."):
            raise SessionProtocolError(f"invalid tensor tag {tag!r}")
    return tags


def result_tags(count: int) -> list[str]:
    """Result tags as the C++ client expects: ``r`` for one, ``r0..r<n-1>`` for more."""
    return ["r"] if count == 1 else [f"r{i}" for i in range(count)]


def error_status(message: str) -> str:
    """A ``status.txt`` error line (the C++ client reads one line)."""
    return "error:" + " ".join(str(message).split())


def failed_command_status(cmd: str) -> str:
    """The status the original server writes when ``main_logic`` returns False."""
    return error_status(f"Failed to process command {cmd}")


# ------------------------------------------------------------------ ZeroMQ form


@attrs.frozen
class Response:
    """A response message: text and tagged tensor results."""

    id: int
    cmd: str
    params: str
    tensors: tuple[tuple[str, np.ndarray], ...] = ()
    #: Set on the request's last message only: ``"ok"`` or ``"error:<message>"``.
    status: str | None = None


@attrs.frozen
class Done:
    """End of a request: ``status`` is ``"ok"`` or ``"error:<message>"``."""

    id: int | None
    status: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


Reply = Response | Done

Frames = list[Any]


def _tensor_frames(tensors: Iterable[tuple[str, Any]]) -> tuple[list[str], Frames]:
    tags: list[str] = []
    frames: Frames = []
    for tag, array in tensors:
        head, data = encode_frames(array)
        tags.append(tag)
        frames += [head, data]
    return tags, frames


def encode_request(req_id: int, cmd: str, params: str, tensors: Iterable[tuple[str, Any]] = ()) -> Frames:
    """Frames of a request; tensor data frames are zero-copy views of the arrays."""
    tags, frames = _tensor_frames(tensors)
    head = json_codec.encode({"id": req_id, "cmd": cmd, "params": params, "tensors": tags})
    return [head, *frames]


def encode_response(
    req_id: int, cmd: str, params: str, tensors: Iterable[tuple[str, Any]] = (), status: str | None = None
) -> Frames:
    """Frames of one response (``status`` set: the request's last message); tensor
    data frames are zero-copy views of the arrays."""
    tags, frames = _tensor_frames(tensors)
    body: dict[str, Any] = {"id": req_id, "kind": "response", "cmd": cmd, "params": params, "tensors": tags}
    if status is not None:
        body["status"] = status
    return [json_codec.encode(body), *frames]


def encode_done(req_id: int | None, status: str) -> Frames:
    """The single frame that ends a request."""
    return [json_codec.encode({"id": req_id, "kind": "done", "status": status})]


def _header(frame: Any) -> dict[str, Any]:
    try:
        body = json_codec.decode(frame)
    except CodecError as exc:
        raise SessionProtocolError(f"header frame: {exc}") from None
    if not isinstance(body, dict):
        raise SessionProtocolError("header frame is not a JSON object")
    return body


def _field(body: Mapping[str, Any], name: str, kind: type, default: Any = _MISSING) -> Any:
    value = body.get(name, default)
    if value is _MISSING:
        raise SessionProtocolError(f'header has no "{name}"')
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SessionProtocolError(f'header "{name}" must be {kind.__name__}, got {type(value).__name__}')
    return value


def _tensors(body: Mapping[str, Any], frames: Sequence[Any], max_tensors: int) -> tuple[tuple[str, np.ndarray], ...]:
    tags = _field(body, "tensors", list, [])
    if len(tags) > max_tensors:
        raise SessionProtocolError(f"{len(tags)} tensors, over the limit of {max_tensors}")
    if not all(isinstance(tag, str) for tag in tags):
        raise SessionProtocolError('"tensors" must list tag strings')
    if len(frames) != 2 * len(tags):
        raise SessionProtocolError(
            f"{len(tags)} tensors need {2 * len(tags)} frames after the header, got {len(frames)}"
        )
    out = []
    for i, tag in enumerate(tags):
        try:
            out.append((tag, decode_frames(frames[2 * i], frames[2 * i + 1])))
        except TSRError as exc:
            raise TSRError(exc.field, f"tensor {tag!r}: {exc.message}") from None
    return tuple(out)


def _buffer(frame: Any) -> Any:
    """The bytes-like content of a frame (``zmq.Frame`` exposes ``.buffer``)."""
    return getattr(frame, "buffer", frame)


def decode_request(
    frames: Sequence[Any], *, max_tensors: int = MAX_TENSORS
) -> tuple[int, Request, tuple[tuple[str, np.ndarray], ...]]:
    """``(id, request, tensors)`` from a request's frames; arrays view the frames' memory."""
    if not frames:
        raise SessionProtocolError("empty message")
    buffers = [_buffer(f) for f in frames]
    body = _header(buffers[0])
    req_id = _field(body, "id", int)
    cmd = _field(body, "cmd", str)
    params = _field(body, "params", str, "")
    if not cmd:
        raise SessionProtocolError('empty "cmd"')
    return req_id, Request(cmd, params), _tensors(body, buffers[1:], max_tensors)


def request_id_of(frames: Sequence[Any]) -> int | None:
    """The ``id`` of a request whose frames may be otherwise malformed, if it has one."""
    try:
        body = _header(_buffer(frames[0]))
        value = body.get("id")
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    except (SessionProtocolError, IndexError):
        return None


def decode_reply(frames: Sequence[Any], *, max_tensors: int = MAX_TENSORS) -> Reply:
    """A :class:`Response` or :class:`Done` from a reply's frames."""
    if not frames:
        raise SessionProtocolError("empty message")
    buffers = [_buffer(f) for f in frames]
    body = _header(buffers[0])
    kind = _field(body, "kind", str)
    req_id = body.get("id")
    if kind == "done":
        if req_id is not None and (not isinstance(req_id, int) or isinstance(req_id, bool)):
            raise SessionProtocolError('header "id" must be int or null')
        if len(buffers) != 1:
            raise SessionProtocolError("a done message has one frame")
        return Done(req_id, _field(body, "status", str))
    if kind == "response":
        status = body.get("status")
        if status is not None and not isinstance(status, str):
            raise SessionProtocolError('header "status" must be a string')
        return Response(
            _field(body, "id", int),
            _field(body, "cmd", str, ""),
            _field(body, "params", str, ""),
            _tensors(body, buffers[1:], max_tensors),
            status,
        )
    raise SessionProtocolError(f"unknown reply kind {kind!r}")
