"""The ``local`` AI backend: offline pinyin conversion with the lattice decoder.

A convert is one pass of :class:`~.decoder.Decoder` in a worker thread (it is CPU
work, about 1-3 ms for a 12-syllable input) under a :class:`trio.CapacityLimiter` of
``threads``; it reports the word candidates (``cloud_candidates``: words spelled by a
prefix of the input, longest first) and then the whole-input sentences in their final
order (``ai_candidates``, best first, distinct; ``comment_name`` is ``engine_label``).
A cancelled convert (timeout or superseded) returns at once; its worker thread notices
at its next input position and stops, and keeps its limiter slot until it has, so CPU
use stays bounded. ``chat`` has no model here and says so.

The data (see :mod:`.lexicon`) is loaded once per process, off the event loop, when
the first backend opens.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import attrs
import trio

from switchyard.services.aipara.backends.base import BackendError, ConvertSink, Emit
from switchyard.services.aipara.backends.decoder import ConversionInterrupted, Decoder, DecoderConfig, Decoding
from switchyard.services.aipara.backends.lattice import normalize
from switchyard.services.aipara.backends.lexicon import load_lexicon
from switchyard.services.aipara.backends.word_lm import shared_word_bigram
from switchyard.services.aipara.protocol import AiCandidate, ChatRequest, ConvertRequest

__all__ = ["LocalBackend", "LocalBackendConfig", "open_local_backend", "shared_decoder"]

T = TypeVar("T")
log = logging.getLogger(__name__)


@attrs.frozen
class LocalBackendConfig:
    """``[actor.config.local]``: limits and knobs of the offline decoder.

    ``hmm`` and ``hmm_beam`` are accepted for old manifests and have no effect (the
    decoder has no HMM pass); setting them logs a one-line deprecation warning.
    """

    max_input_letters: int = 64
    max_words: int = 12
    max_sentences: int = 8
    threads: int = 2
    engine_label: str = "switchyard"
    #: Hypotheses kept per input position; more finds rarer sentences, costs time.
    beam: int = 8
    hmm: bool | None = None
    hmm_beam: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.threads < 1 or self.max_input_letters < 1 or self.beam < 1:
            raise ValueError("threads, max_input_letters and beam must be >= 1")
        if self.hmm is not None or self.hmm_beam is not None:
            log.warning("[local] hmm / hmm_beam are deprecated and ignored: the decoder has no HMM pass")


_decoders: dict[DecoderConfig | None, Decoder] = {}
_decoders_lock = threading.Lock()


def shared_decoder(config: DecoderConfig | None = None, *, beam: int | None = None) -> Decoder:
    """A decoder over the process-wide lexicon (loading takes ~0.7 s from the cache,
    ~12 s the first time on a machine; see docs/aipara.md). Blocking and thread-safe:
    call it from a worker thread. ``beam`` alone picks the default knobs for the data
    present (with or without the word bigram)."""
    lexicon = load_lexicon()
    word_lm, fingerprint = shared_word_bigram()
    if config is None and beam is not None:
        config = DecoderConfig(beam=beam) if word_lm is not None else DecoderConfig.without_word_lm(beam=beam)
    with _decoders_lock:
        decoder = _decoders.get(config)
        if decoder is None:
            decoder = _decoders[config] = Decoder(lexicon, config, word_lm, word_lm_fingerprint=fingerprint)
        return decoder


class LocalBackend:
    """Create with :func:`open_local_backend`."""

    name = "local"

    def __init__(self, config: LocalBackendConfig, decoder: Decoder, limiter: trio.CapacityLimiter) -> None:
        self.config = config
        self.decoder = decoder
        self.limiter = limiter

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        stop = threading.Event()
        try:
            return await trio.to_thread.run_sync(
                partial(fn, *args, should_stop=stop.is_set), limiter=self.limiter, abandon_on_cancel=True
            )
        finally:
            stop.set()

    def _first_pass(self, text: str, *, should_stop: Callable[[], bool]) -> Decoding:
        return self.decoder.decode(text, self.config.max_sentences, should_stop=should_stop)

    async def convert(self, request: ConvertRequest, sink: ConvertSink) -> None:
        text = request.confirmed_pos_input
        letters = normalize(text).letters
        if len(letters) > self.config.max_input_letters:
            raise BackendError(
                f"input too long for the local engine: {len(letters)} letters, limit {self.config.max_input_letters}"
            )
        if not letters:
            return
        try:
            decoding = await self._in_thread(self._first_pass, text)
        except ConversionInterrupted:  # only if stopped without being cancelled: treat as done
            return
        label = self.config.engine_label
        await sink.cloud(list(decoding.words[: self.config.max_words]))
        await sink.ai([AiCandidate(s.text, label) for s in decoding.sentences], ranked=True)

    async def chat(self, request: ChatRequest, emit: Emit) -> None:
        raise BackendError(
            "no chat model configured: the local backend only converts pinyin "
            '(set backend = "openai" with an OpenAI-compatible endpoint to chat)'
        )


@asynccontextmanager
async def open_local_backend(config: LocalBackendConfig | None = None) -> AsyncIterator[LocalBackend]:
    """Load (or reuse) the decoder's data off the event loop and yield the backend."""
    config = config or LocalBackendConfig()
    decoder = await trio.to_thread.run_sync(partial(shared_decoder, beam=config.beam))
    yield LocalBackend(config, decoder, trio.CapacityLimiter(config.threads))
