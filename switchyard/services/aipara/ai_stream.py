"""The AI stream actor: the aipara IME plugin's convert/chat channel (DEALER/ROUTER, tcp 10087).

Requests are single JSON frames from a DEALER; replies stream back to the same
identity (:class:`~switchyard.transports.zmq_bridges.RouterStreamServer`).

* ``convert``: ``convert_result_stream`` messages, each carrying *all* candidates
  found so far (the client keeps only the newest message it finds), the last with
  ``is_final: true``. With ``stream_mode: false`` only the final one is sent. A new
  convert from the same client cancels the running one at once; the old stream sends
  nothing more. When the request's ``timeout`` (seconds; ``default_timeout`` if
  absent, at most ``max_timeout``) runs out: a final message with ``is_timeout: true``
  and what exists. A backend failure: a final message with ``is_error: true`` and
  ``error`` saying why.
* ``chat``: ``chat_result`` chunks carrying the request's ``response_key``, then a
  final chunk with ``is_final: true``; failures in the chat error shape.
* Anything malformed gets one reply in the shape its kind expects (see
  :func:`~switchyard.services.aipara.protocol.ai_error_reply`) and is logged once.

The backend (``local`` or ``openai``, see ``switchyard.services.aipara.backends``) is chosen
in the manifest. If ``rime_state`` names a Rime state actor, this actor follows its
commits and offers the last ``context_commits`` of them to prompts as ``{context}``.

Inside the system: ``ask(ConvertText("nihao"))`` runs the same convert and returns
its final message; ``ask(AiStats())`` returns counters.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Literal

import attrs
import trio

from switchyard.protocols.codec import json_codec
from switchyard.runtime import Actor, ActorError, ActorNotFound, ActorStopped, AskTimeout
from switchyard.runtime.config import endpoint as valid_endpoint
from switchyard.runtime.ratelog import RateLimitedLog
from switchyard.runtime.stats import timed
from switchyard.services.aipara.backends.base import BackendError, open_backend
from switchyard.services.aipara.backends.local import LocalBackendConfig
from switchyard.services.aipara.backends.openai import OpenAIBackendConfig
from switchyard.services.aipara.protocol import (
    AiBadRequest,
    AiCandidate,
    ChatRequest,
    ConvertProgress,
    ConvertRequest,
    ai_error_reply,
    chat_chunk,
    chat_error,
    parse_ai_request,
    sniff_ai_kind,
)
from switchyard.services.aipara.rime_book import CommitEvent
from switchyard.services.aipara.rime_state import subscribe_events
from switchyard.transports.zmq_bridges import (
    LIMIT_KEYS_MOVED,
    EndpointConfig,
    EndpointLimits,
    PeerGone,
    RouterStreamServer,
)
from switchyard.transports.zmq_curve import CurveConfig, enable_curve

__all__ = ["AiStats", "AiStreamActor", "AiStreamConfig", "ConvertText"]

Send = Callable[[dict[str, Any]], Awaitable[None]]


@attrs.frozen
class AiStreamConfig:
    """``[actor.config]`` of an ``ai_stream`` actor."""

    renamed_keys: ClassVar[dict[str, str]] = LIMIT_KEYS_MOVED

    endpoint: str = attrs.field(default="tcp://127.0.0.1:10087", validator=valid_endpoint)
    #: Limits (``[actor.config.limits]``): requests up to 64 KiB, 256 in flight.
    limits: EndpointLimits = attrs.field(factory=lambda: EndpointLimits(max_message_size=64 * 1024, max_concurrent=256))
    backend: Literal["local", "openai"] = "local"
    local: LocalBackendConfig = LocalBackendConfig()
    openai: OpenAIBackendConfig = OpenAIBackendConfig()
    #: Convert timeout (s) when the request has none (the C++ client sends 0 for "none").
    default_timeout: float = 5.0
    max_timeout: float = 30.0
    chat_timeout: float = 120.0
    max_cloud_candidates: int = 20
    max_ai_candidates: int = 20
    #: Name of the Rime state actor whose commits feed ``{context}`` ("" = none).
    rime_state: str = "rime_state"
    context_commits: int = 5
    curve: CurveConfig = CurveConfig()

    def __attrs_post_init__(self) -> None:
        if not (0 < self.default_timeout <= self.max_timeout) or self.chat_timeout <= 0:
            raise ValueError("need 0 < default_timeout <= max_timeout and chat_timeout > 0")


@attrs.frozen
class ConvertText:
    """Convert ``pinyin`` in-process (same path as a socket request)."""

    pinyin: str
    timeout: float | None = None
    candidates_text: tuple[str, ...] = ()


@attrs.frozen
class AiStats:
    pass


class _Sink:
    """Collects a backend's candidates into a :class:`ConvertProgress`, sending a
    cumulative partial message whenever something new arrives (stream mode)."""

    def __init__(self, progress: ConvertProgress, send: Send | None) -> None:
        self.progress = progress
        self.send = send

    async def cloud(self, words: Sequence[str]) -> None:
        if self.progress.add_cloud(words) and self.send is not None:
            await self.send(self.progress.message(is_final=False))

    async def ai(self, candidates: Sequence[AiCandidate], *, ranked: bool = False) -> None:
        if self.progress.add_ai(candidates, ranked=ranked) and self.send is not None:
            await self.send(self.progress.message(is_final=False))


class AiStreamActor(Actor):
    """aipara AI service: streamed pinyin conversion and chat over DEALER/ROUTER."""

    Config = AiStreamConfig
    mailbox_capacity = 64

    async def on_start(self) -> None:
        cfg: AiStreamConfig = self.config
        self.stats = {"converts": 0, "superseded": 0, "timeouts": 0, "errors": 0, "chats": 0, "bad_requests": 0}
        self._converts: dict[bytes, trio.CancelScope] = {}
        self._recent: deque[str] = deque(maxlen=max(cfg.context_commits, 1))
        self._bad = RateLimitedLog(self.log, what="bad requests")
        self.backend = await self.enter(
            open_backend(cfg.backend, local=cfg.local, openai=cfg.openai, context=self._context)
        )
        extra = await enable_curve(cfg.curve, self.nursery, default_domain=self.name)
        endpoint = EndpointConfig.from_config(cfg, socket_extra=extra)
        self.server = RouterStreamServer(
            endpoint,
            timed(self._serve, self.system.metrics.request_observer(self.name, "zmq_router")),
            supersede=False,
            error_reply=self._error_reply,
            name=f"{self.name}.router",
            logger=self.log,
        )
        self.endpoint = await self.nursery.start(self.server.serve)
        if cfg.rime_state and cfg.context_commits > 0:
            self.nursery.start_soon(self._follow_commits, cfg.rime_state)
        self.log.info(
            "AI stream service on %s, backend %s%s",
            self.endpoint,
            self.backend.name,
            " (CURVE)" if cfg.curve.enabled else "",
        )

    async def on_stop(self) -> None:
        await self.server.drain()

    # -- the socket side --------------------------------------------------------------

    async def _serve(self, identity: bytes, body: bytes, send_frame: Callable[[bytes], Awaitable[None]]) -> None:
        async def send(message: dict[str, Any]) -> None:
            await send_frame(json_codec.encode(message))

        request = parse_ai_request(body, max_bytes=self.config.limits.max_message_size)
        if isinstance(request, AiBadRequest):
            self.stats["bad_requests"] += 1
            self._bad("bad request from %r: %s", identity, request.reason)
            await send(ai_error_reply(request))
        elif isinstance(request, ConvertRequest):
            await self._superseding_convert(identity, request, send)
        else:
            await self._chat(request, send)

    def _error_reply(self, exc: BaseException, body: Any) -> bytes:
        # Only reached for failures outside our handler (e.g. an oversized request): the
        # body is not parsed, so its kind is sniffed to answer in the shape it expects.
        reason = str(exc) if isinstance(exc, ValueError) else f"internal error: {type(exc).__name__}"
        self.stats["bad_requests"] += 1
        if isinstance(body, list) and len(body) == 1:  # the unparsed frame of an oversized request
            body = getattr(body[0], "buffer", body[0])
        kind = sniff_ai_kind(body) if isinstance(body, bytes | bytearray | memoryview) else None
        return json_codec.encode(ai_error_reply(AiBadRequest(reason=reason, messege_type=kind)))

    async def _superseding_convert(self, identity: bytes, request: ConvertRequest, send: Send) -> None:
        previous = self._converts.get(identity)
        if previous is not None:
            previous.cancel()
            self.stats["superseded"] += 1
        scope = trio.CancelScope()
        self._converts[identity] = scope
        try:
            with scope:
                await self._convert(request, send)
        finally:
            if self._converts.get(identity) is scope:
                del self._converts[identity]

    # -- convert and chat, whatever the caller ------------------------------------------

    async def _convert(self, request: ConvertRequest, send: Send) -> dict[str, Any]:
        """Run one convert: partial messages (stream mode) and exactly one final one,
        unless the caller is cancelled (superseded), in which case nothing more."""
        cfg: AiStreamConfig = self.config
        self.stats["converts"] += 1
        progress = ConvertProgress(max_cloud=cfg.max_cloud_candidates, max_ai=cfg.max_ai_candidates)
        sink = _Sink(progress, send if request.stream_mode else None)
        timeout = min(request.timeout or cfg.default_timeout, cfg.max_timeout)
        error: str | None = None
        with trio.move_on_after(timeout) as timer:
            error = await self._failure_of("convert", self.backend.convert(request, sink))
        if timer.cancelled_caught:
            self.stats["timeouts"] += 1
        if error is not None:
            self.stats["errors"] += 1
        final = progress.message(is_final=True, is_timeout=timer.cancelled_caught, error=error)
        await send(final)
        return final

    async def _chat(self, request: ChatRequest, send: Send) -> None:
        self.stats["chats"] += 1
        key = request.response_key

        async def emit(text: str) -> None:
            await send(chat_chunk(content=text, response_key=key, is_final=False))

        reason: str | None = None
        with trio.move_on_after(self.config.chat_timeout) as timer:
            reason = await self._failure_of("chat", self.backend.chat(request, emit))
        if timer.cancelled_caught:
            reason = f"chat timed out after {self.config.chat_timeout:g} s"
        if reason is not None:
            self.stats["errors"] += 1
            await send(chat_error(reason=reason, response_key=key))
        else:
            await send(chat_chunk(content="", response_key=key, is_final=True))

    async def _failure_of(self, what: str, call: Awaitable[None]) -> str | None:
        """Await a backend call; return None if it went fine, else the reason to report.

        :class:`BackendError` is the backend speaking to the client; anything else is a
        bug, logged with its traceback and reported as an internal error. A client that
        left (:class:`PeerGone`) and cancellation propagate.
        """
        try:
            await call
        except BackendError as exc:
            return str(exc) or type(exc).__name__
        except PeerGone:
            raise
        except Exception as exc:
            self.log.exception("backend %s failed on %s", self.backend.name, what)
            return f"internal error in the {self.backend.name} backend: {type(exc).__name__}"
        return None

    # -- commits as context ------------------------------------------------------------------

    def _context(self) -> str:
        return " ".join(self._recent)

    async def _follow_commits(self, actor_name: str) -> None:
        """Keep the last few committed texts; re-subscribe if the Rime actor restarts."""
        announced = False
        while True:
            try:
                ref = self.system.lookup(actor_name)
                async with subscribe_events(ref, kinds=("commit",)) as events:
                    if not announced:
                        self.log.info("following commits of %r for prompt context", actor_name)
                        announced = True
                    async for event in events:
                        if isinstance(event, CommitEvent) and event.text:
                            self._recent.append(event.text)
            except (ActorNotFound, ActorStopped, ActorError, AskTimeout) as exc:
                if not announced:
                    self.log.info("no commits to follow from %r yet (%s); will retry", actor_name, type(exc).__name__)
                    announced = True
            await trio.sleep(1.0)

    # -- the mailbox side --------------------------------------------------------------

    async def handle(self, message: Any) -> Any:
        if isinstance(message, ConvertText):
            return await self._convert(self._as_request(message), _discard)
        if isinstance(message, AiStats):
            return {**self.stats, "backend": self.backend.name, "running_converts": len(self._converts)}
        raise TypeError(f"{type(self).__name__} does not understand {type(message).__name__}")

    @staticmethod
    def _as_request(message: ConvertText) -> ConvertRequest:
        return ConvertRequest(
            confirmed_pos_input=message.pinyin, timeout=message.timeout, candidates_text=tuple(message.candidates_text)
        )


async def _discard(_message: dict[str, Any]) -> None:
    await trio.lowlevel.checkpoint()
