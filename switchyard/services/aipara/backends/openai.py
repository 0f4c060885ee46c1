"""The ``openai`` AI backend: any OpenAI-compatible chat-completions endpoint, streamed.

``POST {base_url}/chat/completions`` with ``"stream": true``, read as server-sent
events through httpx (which runs on Trio via AnyIO). Works with OpenAI itself and
with local servers that speak the same API (llama.cpp, Ollama, vLLM, LM Studio).

* ``convert``: the convert prompts ask for one candidate per line; each line is
  reported as an AI candidate as soon as it is complete, with ``comment_name`` set
  to ``comment_name`` (default: the model name).
* ``chat``: ``chat_prompts[assistant_id]`` (or ``chat_prompts["default"]``) is the
  system prompt; ``chat_user_template`` renders the user message; content chunks
  are passed on as they arrive.

The API key is read from the environment variable named by ``api_key_env`` when the
backend opens; without it no ``Authorization`` header is sent (local servers
rarely need one). Proxy environment variables are ignored (``trust_env=False``) so
a loopback ``base_url`` stays on loopback.

Template placeholders, checked when the config is loaded:
convert prompts: ``{pinyin} {schema_name} {shuru_schema} {candidates} {context}
{max_candidates}``; chat prompts: ``{commit_text} {assistant_id} {context}``.
``{context}`` is recent text the user committed (from the Rime state actor, if wired).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager

import attrs
import httpx

from switchyard.services.aipara.backends.base import BackendError, ConvertSink, Emit
from switchyard.services.aipara.openai_protocol import (
    CandidateLines,
    CompletionError,
    SSEDecoder,
    SSEError,
    chat_completion_request,
    check_template,
    encode_request,
    error_message,
    parse_completion_event,
    parse_whole_completion,
    render_template,
)
from switchyard.services.aipara.protocol import AiCandidate, ChatRequest, ConvertRequest

__all__ = ["OpenAIBackend", "OpenAIBackendConfig", "open_openai_backend"]

log = logging.getLogger("switchyard.services.aipara.backends.openai")

CONVERT_FIELDS = ("pinyin", "schema_name", "shuru_schema", "candidates", "context", "max_candidates")
CHAT_FIELDS = ("commit_text", "assistant_id", "context")

DEFAULT_CONVERT_SYSTEM = (
    "你是中文输入法的拼音转换引擎。把用户输入的拼音转换成最可能的中文句子或词语，"
    "最多给出 {max_candidates} 个候选，每行一个，按可能性从高到低排列，不要编号，不要解释。"
)
DEFAULT_CONVERT_PROMPT = "拼音：{pinyin}\n输入法已有的候选：{candidates}\n用户最近输入：{context}"
DEFAULT_CHAT_PROMPTS = {"default": "你是输入法里的 AI 助手，请简洁地用中文回答。"}


def _check_templates(instance: OpenAIBackendConfig) -> None:
    check_template(instance.convert_system_prompt, CONVERT_FIELDS, what="convert_system_prompt")
    check_template(instance.convert_prompt, CONVERT_FIELDS, what="convert_prompt")
    check_template(instance.chat_user_template, CHAT_FIELDS, what="chat_user_template")
    for assistant, prompt in instance.chat_prompts.items():
        check_template(prompt, CHAT_FIELDS, what=f"chat_prompts.{assistant}")


@attrs.frozen
class OpenAIBackendConfig:
    """``[actor.config.openai]``: endpoint, model, key variable, prompts, limits."""

    base_url: str = "http://127.0.0.1:8080/v1"
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"
    convert_system_prompt: str = DEFAULT_CONVERT_SYSTEM
    convert_prompt: str = DEFAULT_CONVERT_PROMPT
    chat_prompts: dict[str, str] = attrs.Factory(lambda: dict(DEFAULT_CHAT_PROMPTS))
    chat_user_template: str = "{commit_text}"
    comment_name: str = ""
    max_candidates: int = 5
    temperature: float | None = None
    max_tokens: int | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_connections: int = 16
    max_event_bytes: int = 1 << 20

    def __attrs_post_init__(self) -> None:
        _check_templates(self)
        if self.max_candidates < 1 or self.max_connections < 1:
            raise ValueError("max_candidates and max_connections must be >= 1")


class _Enough(Exception):
    """Internal: stop reading the stream, the caller has what it needs."""


class OpenAIBackend:
    """Create with :func:`open_openai_backend`."""

    name = "openai"

    def __init__(
        self,
        config: OpenAIBackendConfig,
        client: httpx.AsyncClient,
        *,
        api_key: str | None,
        context: Callable[[], str] | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.comment_name = config.comment_name or config.model
        self._api_key = api_key
        self._context = context or (lambda: "")

    async def _complete(self, messages: Sequence[Mapping[str, str]], on_text: Callable[[str], Awaitable[None]]) -> None:
        cfg = self.config
        body = chat_completion_request(cfg.model, messages, temperature=cfg.temperature, max_tokens=cfg.max_tokens)
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            async with self.client.stream("POST", self.url, content=encode_request(body), headers=headers) as response:
                if response.status_code != 200:
                    raise BackendError(
                        f"{self.url} answered HTTP {response.status_code}: {await _error_text(response)}"
                    )
                content_type = response.headers.get("content-type", "")
                if "text/event-stream" not in content_type:
                    await on_text(await _whole_reply(response, cfg.max_event_bytes))
                    return
                decoder = SSEDecoder(max_event_bytes=cfg.max_event_bytes)
                finished = False
                async for chunk in response.aiter_bytes():
                    for event in decoder.feed(chunk):
                        delta = parse_completion_event(event.data)
                        if delta.done:
                            return
                        if delta.content:
                            await on_text(delta.content)
                        finished = finished or delta.finish_reason is not None
                if not finished:
                    raise BackendError(f"the completion stream from {self.url} ended before the answer was finished")
        except httpx.TimeoutException as exc:
            raise BackendError(f"timed out talking to {self.url} ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise BackendError(f"cannot reach {self.url}: {exc or type(exc).__name__}") from None
        except (SSEError, CompletionError) as exc:
            raise BackendError(f"bad completion stream from {self.url}: {exc}") from None

    async def convert(self, request: ConvertRequest, sink: ConvertSink) -> None:
        cfg = self.config
        values = {
            "pinyin": request.confirmed_pos_input,
            "schema_name": request.schema_name,
            "shuru_schema": request.shuru_schema,
            "candidates": "、".join(request.candidates_text),
            "context": self._context(),
            "max_candidates": cfg.max_candidates,
        }
        messages = [
            {"role": "system", "content": render_template(cfg.convert_system_prompt, values)},
            {"role": "user", "content": render_template(cfg.convert_prompt, values)},
        ]
        lines = CandidateLines()
        count = 0

        async def report(found: list[str]) -> None:
            nonlocal count
            found = found[: cfg.max_candidates - count]
            if found:
                count += len(found)
                await sink.ai([AiCandidate(text, self.comment_name) for text in found])
            if count >= cfg.max_candidates:
                raise _Enough

        async def on_text(text: str) -> None:
            await report(lines.feed(text))

        try:
            await self._complete(messages, on_text)
            await report(lines.flush())
        except _Enough:
            pass

    async def chat(self, request: ChatRequest, emit: Emit) -> None:
        cfg = self.config
        system = cfg.chat_prompts.get(request.assistant_id) or cfg.chat_prompts.get("default")
        if system is None:
            known = ", ".join(sorted(cfg.chat_prompts)) or "(none)"
            raise BackendError(f"unknown assistant_id {request.assistant_id!r}; configured: {known}")
        values = {"commit_text": request.commit_text, "assistant_id": request.assistant_id, "context": self._context()}
        messages = [
            {"role": "system", "content": render_template(system, values)},
            {"role": "user", "content": render_template(cfg.chat_user_template, values)},
        ]
        await self._complete(messages, emit)


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > limit:
            raise BackendError(f"reply from {response.url} is larger than {limit} bytes")
    return data


async def _error_text(response: httpx.Response) -> str:
    try:
        raw = await _read_limited(response, 4096)
    except BackendError:
        return "(error body too large)"
    return error_message(raw) or raw.decode("utf-8", "replace").strip()[:300] or response.reason_phrase


async def _whole_reply(response: httpx.Response, limit: int) -> str:
    """A server that ignored ``stream: true`` and sent one JSON completion."""
    raw = await _read_limited(response, limit)
    try:
        return parse_whole_completion(raw)
    except CompletionError:
        raise BackendError(f"unreadable reply from {response.url}") from None


@asynccontextmanager
async def open_openai_backend(
    config: OpenAIBackendConfig | None = None, *, context: Callable[[], str] | None = None
) -> AsyncIterator[OpenAIBackend]:
    """An HTTP client pool for the endpoint, closed on exit."""
    config = config or OpenAIBackendConfig()
    api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
    log.info(
        "openai backend: %s model %s, API key %s",
        config.base_url,
        config.model,
        f"from ${config.api_key_env}" if api_key else f"not set (${config.api_key_env} is empty)",
    )
    timeout = httpx.Timeout(config.read_timeout, connect=config.connect_timeout)
    limits = httpx.Limits(max_connections=config.max_connections, max_keepalive_connections=config.max_connections)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        yield OpenAIBackend(config, client, api_key=api_key, context=context)
