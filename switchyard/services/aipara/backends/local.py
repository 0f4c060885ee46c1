"""The ``local`` AI backend: offline pinyin conversion with ``pinyin2hanzi``.

A convert streams in up to three steps, each run in a worker thread (it is CPU
work) under a :class:`trio.CapacityLimiter` of ``threads``:

1. word candidates (dictionary words spelling a prefix of the input) and the best
   sentences of the DAG lattice, reported together;
2. with ``hmm = true``, a Viterbi pass over the best syllable split with the HMM
   model, adding its sentences.

``comment_name`` of each AI candidate names the engine: ``"<engine_label> DAG"``,
``"<engine_label> HMM"``, or ``"<engine_label> DAG+HMM"`` when both found it; after
the HMM pass the sentences are re-ordered by reciprocal-rank fusion of both models. A cancelled convert (timeout or superseded) returns at
once; its worker thread notices at its next step and stops, and keeps its limiter
slot until it has, so CPU use stays bounded. ``chat`` has no model here and says so.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import attrs
import trio

from switchyard.services.aipara.backends.base import BackendError, ConvertSink, Emit
from switchyard.services.aipara.backends.pinyin_engine import (
    ConversionInterrupted,
    PinyinEngine,
    Sentence,
    normalize_pinyin,
)
from switchyard.services.aipara.protocol import AiCandidate, ChatRequest, ConvertRequest

__all__ = ["LocalBackend", "LocalBackendConfig", "open_local_backend", "shared_engine"]

T = TypeVar("T")


@attrs.frozen
class LocalBackendConfig:
    """``[actor.config.local]``: limits and knobs of the offline engine."""

    hmm: bool = True
    hmm_beam: int = 24
    max_input_letters: int = 64
    max_words: int = 12
    max_sentences: int = 8
    threads: int = 2
    engine_label: str = "pinyin2hanzi"

    def __attrs_post_init__(self) -> None:
        if self.threads < 1 or self.max_input_letters < 1 or self.hmm_beam < 1:
            raise ValueError("threads, max_input_letters and hmm_beam must be >= 1")


_engines: dict[bool, PinyinEngine] = {}
_engines_lock = threading.Lock()


def shared_engine(with_hmm: bool) -> PinyinEngine:
    """The process-wide engine (loading takes ~0.4 s and ~100 MB, so do it once).

    Blocking and thread-safe: call it from a worker thread.
    """
    with _engines_lock:
        engine = _engines.get(with_hmm) or (_engines.get(True) if not with_hmm else None)
        if engine is None:
            engine = _engines[with_hmm] = PinyinEngine.load(with_hmm=with_hmm)
        return engine


class LocalBackend:
    """Create with :func:`open_local_backend`."""

    name = "local"

    def __init__(self, config: LocalBackendConfig, engine: PinyinEngine, limiter: trio.CapacityLimiter) -> None:
        self.config = config
        self.engine = engine
        self.limiter = limiter
        self.dag_label = f"{config.engine_label} DAG"
        self.hmm_label = f"{config.engine_label} HMM"

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        stop = threading.Event()
        try:
            return await trio.to_thread.run_sync(
                partial(fn, *args, should_stop=stop.is_set), limiter=self.limiter, abandon_on_cancel=True
            )
        finally:
            stop.set()

    def _first_pass(self, text: str, *, should_stop: Callable[[], bool]) -> tuple[list[str], list[Any]]:
        cfg = self.config
        words = self.engine.words(text, cfg.max_words, should_stop=should_stop)
        sentences = self.engine.sentences(text, cfg.max_sentences, should_stop=should_stop)
        return words, sentences

    async def convert(self, request: ConvertRequest, sink: ConvertSink) -> None:
        text = request.confirmed_pos_input
        letters, _ = normalize_pinyin(text)
        if len(letters) > self.config.max_input_letters:
            raise BackendError(
                f"input too long for the local engine: {len(letters)} letters, limit {self.config.max_input_letters}"
            )
        if not letters:
            return
        try:
            words, sentences = await self._in_thread(self._first_pass, text)
            await sink.cloud(words)
            await sink.ai([AiCandidate(s.text, self.dag_label) for s in sentences])
            if self.config.hmm and sentences and self.engine.hmm is not None:
                hmm = await self._in_thread(
                    partial(self.engine.hmm_sentences, beam=self.config.hmm_beam),
                    sentences[0].syllables,
                    self.config.max_sentences,
                )
                await sink.ai(self._fused(sentences, hmm), ranked=True)
        except ConversionInterrupted:  # only if stopped without being cancelled: treat as done
            return

    def _fused(self, dag: Sequence[Sentence], hmm: Sequence[Sentence]) -> list[AiCandidate]:
        """Both models' sentences in one order: weighted reciprocal-rank fusion, the
        word-level DAG counting twice the character-level HMM, so a sentence both rank
        well beats one only the DAG likes. ``comment_name`` says which found it."""
        scores: dict[str, float] = {}
        found: dict[str, list[str]] = {}
        for label, weight, ranked in ((self.dag_label, 1.0, dag), (self.hmm_label, 0.5, hmm)):
            for rank, sentence in enumerate(ranked, 1):
                scores[sentence.text] = scores.get(sentence.text, 0.0) + weight / (1 + rank)
                found.setdefault(sentence.text, []).append(label)
        order = sorted(scores, key=lambda text: -scores[text])  # stable: DAG order breaks ties
        both = f"{self.config.engine_label} DAG+HMM"
        return [AiCandidate(text, both if len(found[text]) > 1 else found[text][0]) for text in order]

    async def chat(self, request: ChatRequest, emit: Emit) -> None:
        raise BackendError(
            "no chat model configured: the local backend only converts pinyin "
            '(set backend = "openai" with an OpenAI-compatible endpoint to chat)'
        )


@asynccontextmanager
async def open_local_backend(config: LocalBackendConfig | None = None) -> AsyncIterator[LocalBackend]:
    """Load (or reuse) the engine off the event loop and yield the backend."""
    config = config or LocalBackendConfig()
    engine = await trio.to_thread.run_sync(shared_engine, config.hmm)
    yield LocalBackend(config, engine, trio.CapacityLimiter(config.threads))
