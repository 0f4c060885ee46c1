"""OpenAI-compatible chat completions, streamed, as sans-IO pieces for the aipara AI backend.

* :func:`chat_completion_request`: the JSON body of ``POST {base_url}/chat/completions``
  with ``"stream": true``.
* :class:`SSEDecoder`: bytes of a ``text/event-stream`` response in, events out
  (the WHATWG rules: any line ending, ``:`` comments, multi-line ``data``, a
  leading BOM; an event longer than the limit is an error, not unbounded growth).
* :func:`parse_completion_event`: one event's ``data`` to a :class:`CompletionDelta`
  (content text, finish reason, or the ``[DONE]`` sentinel); an error object or
  malformed JSON raises :class:`CompletionError`.
* :func:`parse_whole_completion`, :func:`error_message`, :func:`encode_request`: the
  non-streamed reply, an error body, and the request body as bytes; all JSON goes
  through :mod:`switchyard.protocols.codec`.
* :class:`CandidateLines`: streamed text to complete candidate lines, for "one
  candidate per line" convert prompts.
* :func:`check_template` / :func:`render_template`: ``str.format`` templates whose
  placeholders are checked against the names a caller provides.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from switchyard.protocols.codec import CodecError, json_codec

__all__ = [
    "CandidateLines",
    "CompletionDelta",
    "CompletionError",
    "SSEDecoder",
    "SSEError",
    "SSEEvent",
    "chat_completion_request",
    "check_template",
    "clean_candidate",
    "encode_request",
    "error_message",
    "parse_completion_event",
    "parse_whole_completion",
    "render_template",
]


def chat_completion_request(
    model: str,
    messages: Sequence[Mapping[str, str]],
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """The request body for a streamed chat completion."""
    body: dict[str, Any] = {"model": model, "messages": [dict(m) for m in messages], "stream": True}
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


class SSEError(ValueError):
    """The event stream broke a limit."""


@attrs.frozen
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None


class SSEDecoder:
    """Incremental ``text/event-stream`` parser. ``feed`` returns the events completed so far."""

    def __init__(self, *, max_event_bytes: int = 1 << 20) -> None:
        self.max_event_bytes = max_event_bytes
        self._buffer = b""
        self._data: list[str] = []
        self._data_size = 0
        self._event = ""
        self._id: str | None = None
        self._started = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buffer += chunk
        if not self._started:
            if len(self._buffer) < 3 and b"\xef\xbb\xbf".startswith(self._buffer):
                return []
            if self._buffer.startswith(b"\xef\xbb\xbf"):
                self._buffer = self._buffer[3:]
            self._started = True
        events: list[SSEEvent] = []
        while True:
            match = re.search(rb"\r\n|\r|\n", self._buffer)
            if match is None:
                break
            if match.group() == b"\r" and match.end() == len(self._buffer):
                break  # a lone CR at the end may be the first half of CRLF
            line = self._buffer[: match.start()]
            self._buffer = self._buffer[match.end() :]
            event = self._line(line.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        if len(self._buffer) + self._data_size > self.max_event_bytes:
            raise SSEError(f"server-sent event larger than {self.max_event_bytes} bytes")
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = SSEEvent(data="\n".join(self._data), event=self._event or "message", id=self._id)
            self._data, self._data_size, self._event = [], 0, ""
            return event
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._data_size += len(value) + 1
            if self._data_size > self.max_event_bytes:
                raise SSEError(f"server-sent event larger than {self.max_event_bytes} bytes")
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


class CompletionError(Exception):
    """The endpoint reported an error inside the stream, or sent something unreadable."""


@attrs.frozen
class CompletionDelta:
    content: str = ""
    finish_reason: str | None = None
    done: bool = False


def parse_completion_event(data: str) -> CompletionDelta:
    """One SSE ``data`` payload of a streamed chat completion."""
    if data.strip() == "[DONE]":
        return CompletionDelta(done=True)
    try:
        obj = json_codec.decode(data.encode("utf-8", "surrogatepass"))
    except (CodecError, UnicodeEncodeError) as exc:
        raise CompletionError(f"unreadable stream chunk: {exc}") from None
    if not isinstance(obj, dict):
        raise CompletionError("unreadable stream chunk: not a JSON object")
    error = obj.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else str(error)
        raise CompletionError(str(message or error))
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices:
        return CompletionDelta()  # e.g. a usage-only chunk
    choice = choices[0] if isinstance(choices[0], dict) else {}
    delta = choice.get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    finish = choice.get("finish_reason")
    return CompletionDelta(
        content=content if isinstance(content, str) else "",
        finish_reason=finish if isinstance(finish, str) else None,
    )


def parse_whole_completion(raw: bytes) -> str:
    """The content of a non-streamed completion (a server that ignored ``stream: true``).

    Raises :class:`CompletionError` if it is not ``{"choices":[{"message":{"content": str}}]}``.
    """
    try:
        content = json_codec.decode(raw)["choices"][0]["message"]["content"]
    except (CodecError, KeyError, IndexError, TypeError):
        raise CompletionError("unreadable completion") from None
    if not isinstance(content, str):
        raise CompletionError("unreadable completion: content is not text")
    return content


def error_message(raw: bytes) -> str | None:
    """The ``error.message`` of an OpenAI-style error body, if it has one."""
    try:
        obj = json_codec.decode(raw)
    except CodecError:
        return None
    error = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return None


def encode_request(body: Mapping[str, Any]) -> bytes:
    """A request body (from :func:`chat_completion_request`) as UTF-8 JSON bytes."""
    return json_codec.encode(dict(body))


_LEADER = re.compile(r"^\s*(?:[-*•·]|\d+\s*[.)、:：]|[（(]\d+[)）])\s*")


def clean_candidate(line: str) -> str:
    """A model's candidate line without list markers, quotes or surrounding space."""
    text = _LEADER.sub("", line).strip()
    return text.strip("\"'“”‘’「」『』`").strip()


class CandidateLines:
    """Turn streamed text into complete, cleaned, distinct candidate lines."""

    def __init__(self, *, max_line_chars: int = 200) -> None:
        self.max_line_chars = max_line_chars
        self._pending = ""
        self._seen: set[str] = set()

    def feed(self, text: str) -> list[str]:
        self._pending += text
        *complete, self._pending = re.split(r"\r\n|\r|\n", self._pending)
        if len(self._pending) > self.max_line_chars:
            complete.append(self._pending)
            self._pending = ""
        return self._accept(complete)

    def flush(self) -> list[str]:
        rest, self._pending = self._pending, ""
        return self._accept([rest])

    def _accept(self, lines: Iterable[str]) -> list[str]:
        out = []
        for line in lines:
            cand = clean_candidate(line)[: self.max_line_chars]
            if cand and cand not in self._seen:
                self._seen.add(cand)
                out.append(cand)
        return out


def check_template(template: str, allowed: Iterable[str], *, what: str = "template") -> None:
    """Raise ``ValueError`` naming any placeholder of ``template`` not in ``allowed``
    (or a template ``str.format`` cannot parse)."""
    names = set(allowed)
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    for field in fields:
        root = re.split(r"[.\[]", field, maxsplit=1)[0]
        if root == "" or root.isdigit():
            raise ValueError(
                f"{what}: positional placeholder {{{field}}} is not allowed; use names: {', '.join(sorted(names))}"
            )
        if root not in names:
            raise ValueError(f"{what}: unknown placeholder {{{root}}}; known: {', '.join(sorted(names))}")
        if field != root:
            raise ValueError(f"{what}: placeholder {{{field}}}: attribute and index access are not allowed")


def render_template(template: str, values: Mapping[str, Any]) -> str:
    """``template.format(**values)``; check the template first with :func:`check_template`."""
    return template.format(**values)
