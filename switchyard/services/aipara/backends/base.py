"""What an AI backend is to the ``ai_stream`` actor.

A backend answers two requests:

* ``convert(request, sink)``: report candidates as they are found, ``await
  sink.cloud(words)`` for word candidates and ``await sink.ai(candidates)`` for
  sentence candidates, any number of times; return when done. ``sink.ai(candidates,
  ranked=True)`` says "this is the best order of what I found": it goes first. The actor owns
  timing: it cancels ``convert`` when the request's timeout runs out or a newer
  convert from the same client supersedes it, and then answers with what the sink
  holds. So a backend must stop promptly when cancelled.
* ``chat(request, emit)``: ``await emit(text)`` for each content chunk; return when
  done.

Either raises :class:`BackendError` for a failure the client should hear about (the
actor turns it into a final ``is_error`` message); anything else is a bug, logged
and reported as an internal error.

Backends are opened with :func:`open_backend` as async context managers: the
``async with`` owns their threads' limiter, HTTP connection pool and model data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from switchyard.services.aipara.protocol import AiCandidate, ChatRequest, ConvertRequest

__all__ = ["BACKENDS", "AiBackend", "BackendError", "ConvertSink", "Emit", "open_backend"]


class BackendError(Exception):
    """A failure to report to the client (``is_error`` / chat ``error``), in plain words."""


class ConvertSink(Protocol):
    async def cloud(self, words: Sequence[str]) -> None: ...

    async def ai(self, candidates: Sequence[AiCandidate], *, ranked: bool = False) -> None: ...


Emit = Callable[[str], Awaitable[None]]


class AiBackend(Protocol):
    #: Short name for logs and stats.
    name: str

    async def convert(self, request: ConvertRequest, sink: ConvertSink) -> None: ...

    async def chat(self, request: ChatRequest, emit: Emit) -> None: ...


BACKENDS = ("local", "openai")


@asynccontextmanager
async def open_backend(
    kind: str, *, local: object, openai: object, context: Callable[[], str] | None = None
) -> AsyncIterator[AiBackend]:
    """Open the backend called ``kind`` with its config section.

    ``context`` (optional) returns recent text the user committed, for backends whose
    prompts can use it.
    """
    if kind == "local":
        from switchyard.services.aipara.backends.local import open_local_backend

        async with open_local_backend(local) as backend:  # type: ignore[arg-type]
            yield backend
    elif kind == "openai":
        from switchyard.services.aipara.backends.openai import open_openai_backend

        async with open_openai_backend(openai, context=context) as backend:  # type: ignore[arg-type]
            yield backend
    else:
        raise ValueError(f"unknown AI backend {kind!r} (known: {', '.join(BACKENDS)})")
