"""aipara AI convert/chat channel (client DEALER, single-frame requests), sans-IO.

:func:`parse_ai_request` gives a :class:`ConvertRequest`, :class:`ChatRequest` or
:class:`AiBadRequest` and never raises; replies are built by :class:`ConvertProgress`
(cumulative ``convert_result_stream`` messages), :func:`chat_chunk`, :func:`chat_error`
and :func:`ai_error_reply`. Field names are the peer's (docs/aipara.md), typos included.

Nothing here does I/O; every function is deterministic given its arguments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from switchyard.services.aipara.wire import (
    DEFAULT_MAX_REQUEST_BYTES,
    MESSEGE_TYPE,
    _decode_object,
    _in_range_number,
    _Invalid,
    _kind,
    _opt_bool,
    _opt_str,
    _opt_timestamp,
    _req_str,
    json_type_name,
)

__all__ = [
    "AiBadRequest",
    "AiCandidate",
    "AiRequest",
    "ChatRequest",
    "ConvertProgress",
    "ConvertRequest",
    "ai_error_reply",
    "chat_chunk",
    "chat_error",
    "parse_ai_request",
    "sniff_ai_kind",
]

AI_KINDS = ("convert", "chat")


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
