"""The baseline for the offline decoder: the earlier engine over ``pinyin2hanzi``'s DAG
(and HMM) data, kept here only so the benchmark measures it in the same run.

Pure, synchronous, CPU-bound code: callers on Trio run it in ``trio.to_thread``.

Continuous pinyin is ambiguous before it is converted: ``xian`` is one syllable (先,
现) or two (西安). Instead of picking one split up front, :class:`PinyinEngine` builds
a *lattice* over the input string: every dictionary word whose pinyin spells a
substring is an edge, weighted by the DAG model's log score. The best paths through
the lattice are the sentence candidates; each path carries its syllable split, so
competing splits are scored by the words they make rather than guessed (see
:meth:`PinyinEngine.segmentations`). Word candidates are the lattice edges leaving
the start of the input. The HMM (Viterbi) model is slower; :meth:`PinyinEngine.hmm_sentences`
re-ranks the best split with it, beam-limited and interruptible.

Input is lower-cased; apostrophes, spaces and other non-letters are syllable
boundaries (``xi'an`` is xi + an, still converted as the word 西安). If the input
does not split into whole syllables, its last few letters may be an unfinished
syllable (``nihaoshij``): they are expanded to the syllables they begin.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import attrs

__all__ = ["ConversionInterrupted", "PinyinEngine", "Segmentation", "Sentence", "normalize_pinyin"]

MAX_SYLLABLE_LETTERS = 6
_SEPARATORS = re.compile(r"[^a-z]+")


class ConversionInterrupted(Exception):
    """Raised inside a conversion when its ``should_stop`` callback says so."""


@attrs.frozen
class Sentence:
    """A candidate conversion: its text, the syllables it spells, its log score."""

    text: str
    syllables: tuple[str, ...]
    score: float
    words: tuple[str, ...] = ()


@attrs.frozen
class Segmentation:
    """One way to split the input into syllables, scored by the best sentence it makes."""

    syllables: tuple[str, ...]
    score: float


@attrs.frozen
class _Edge:
    end: int
    word: str
    syllables: tuple[str, ...]
    logp: float


def normalize_pinyin(text: str) -> tuple[str, frozenset[int]]:
    """Lower-case ``text``, drop non-letters and return ``(letters, boundaries)``:
    the positions in ``letters`` where a separator stood (``ü`` is written ``v``).

    A syllable never spans a boundary; a word may (``xi'an`` is still 西安).
    """
    lowered = text.lower().replace("ü", "v").replace("u:", "v")
    chunks = [chunk for chunk in _SEPARATORS.split(lowered) if chunk]
    boundaries: set[int] = set()
    pos = 0
    for chunk in chunks[:-1]:
        pos += len(chunk)
        boundaries.add(pos)
    return "".join(chunks), frozenset(boundaries)


class PinyinEngine:
    """Lattice conversion over ``Pinyin2Hanzi`` DAG data (and optionally its HMM data).

    ``dag_params``/``hmm_params`` are ``Pinyin2Hanzi.DefaultDagParams()`` /
    ``DefaultHmmParams()`` or anything with the same methods; :meth:`load` builds the
    defaults (about 0.4 s and ~100 MB: do it once, off the event loop).
    """

    def __init__(self, dag_params: Any, hmm_params: Any | None = None, *, max_word_syllables: int = 8) -> None:
        from Pinyin2Hanzi import all_pinyin

        self.dag = dag_params
        self.hmm = hmm_params
        self.max_word_syllables = max_word_syllables
        self.syllables = frozenset(p for p in all_pinyin() if p != "null")
        by_prefix: dict[str, list[str]] = {}
        for syl in self.syllables:
            for i in range(1, len(syl)):
                by_prefix.setdefault(syl[:i], []).append(syl)
        self._completions = {k: tuple(sorted(v)) for k, v in by_prefix.items()}
        self._hmm_states = lru_cache(maxsize=1024)(self._hmm_states_uncached)

    @classmethod
    def load(cls, *, with_hmm: bool = True, max_word_syllables: int = 8) -> PinyinEngine:
        """The engine over the data bundled with ``pinyin2hanzi`` (blocking)."""
        from Pinyin2Hanzi import DefaultDagParams, DefaultHmmParams

        return cls(DefaultDagParams(), DefaultHmmParams() if with_hmm else None, max_word_syllables=max_word_syllables)

    # -- lattice ------------------------------------------------------------------

    def _syllable_spans(
        self, letters: str, boundaries: frozenset[int], allow_partial: bool
    ) -> list[list[tuple[int, str]]]:
        """For each position, the syllables starting there: ``(end, syllable)``.

        With ``allow_partial`` an unfinished syllable at the very end is expanded.
        """
        n = len(letters)
        spans: list[list[tuple[int, str]]] = [[] for _ in range(n)]
        for i in range(n):
            for length in range(1, min(MAX_SYLLABLE_LETTERS, n - i) + 1):
                if any(i < b < i + length for b in boundaries):
                    break
                piece = letters[i : i + length]
                if piece in self.syllables:
                    spans[i].append((i + length, piece))
            if allow_partial and not any(b > i for b in boundaries):
                for syl in self._completions.get(letters[i:], ()):
                    spans[i].append((n, syl))
        return spans

    @staticmethod
    def _reachable_end(spans: list[list[tuple[int, str]]], n: int) -> bool:
        reach = [False] * (n + 1)
        reach[0] = True
        for i in range(n):
            if reach[i]:
                for end, _ in spans[i]:
                    reach[end] = True
        return reach[n]

    def _edges(
        self, letters: str, boundaries: frozenset[int], should_stop: Callable[[], bool] | None
    ) -> list[list[_Edge]]:
        n = len(letters)
        spans = self._syllable_spans(letters, boundaries, allow_partial=False)
        if not self._reachable_end(spans, n):
            spans = self._syllable_spans(letters, boundaries, allow_partial=True)
        edges: list[list[_Edge]] = [[] for _ in range(n)]
        for start in range(n):
            if should_stop is not None and should_stop():
                raise ConversionInterrupted()
            # Depth-first over syllable paths from ``start``, looking each up as a word.
            stack: list[tuple[int, tuple[str, ...]]] = [(start, ())]
            while stack:
                pos, syls = stack.pop()
                if len(syls) >= self.max_word_syllables or pos >= n:
                    continue
                for end, syl in spans[pos]:
                    path = (*syls, syl)
                    for word, prob in self.dag.get_phrase(list(path), num=8):
                        if prob > 0:
                            edges[start].append(_Edge(end, word, path, math.log(prob)))
                    stack.append((end, path))
        return edges

    def _best_paths(self, text: str, k: int, should_stop: Callable[[], bool] | None) -> list[Sentence]:
        letters, boundaries = normalize_pinyin(text)
        n = len(letters)
        if n == 0:
            return []
        edges = self._edges(letters, boundaries, should_stop)
        # best[i]: up to k distinct texts reaching position i -> (score, order, words, syllables).
        best: list[dict[str, tuple[float, int, tuple[str, ...], tuple[str, ...]]]] = [{} for _ in range(n + 1)]
        best[0] = {"": (0.0, 0, (), ())}
        counter = 1
        for i in range(n):
            if not best[i]:
                continue
            for edge in edges[i]:
                target = best[edge.end]
                for text_so_far, (score, _, words, syls) in list(best[i].items()):
                    new_text = text_so_far + edge.word
                    new_score = score + edge.logp
                    old = target.get(new_text)
                    if old is not None and old[0] >= new_score:
                        continue
                    if old is None and len(target) >= k:
                        worst = min(target, key=lambda t: target[t][0])
                        if target[worst][0] >= new_score:
                            continue
                        del target[worst]
                    target[new_text] = (new_score, counter, (*words, edge.word), (*syls, *edge.syllables))
                    counter += 1
        ranked = sorted(best[n].items(), key=lambda kv: (-kv[1][0], kv[1][1]))
        return [Sentence(text_, syls, score, words) for text_, (score, _, words, syls) in ranked]

    # -- public API ------------------------------------------------------------------

    def sentences(self, text: str, limit: int = 8, *, should_stop: Callable[[], bool] | None = None) -> list[Sentence]:
        """The ``limit`` best whole-input conversions, best first, distinct texts (DAG
        model). Empty if the input cannot be spelled with pinyin syllables."""
        return self._best_paths(text, limit, should_stop)[:limit]

    def segmentations(self, text: str, limit: int = 8, *, beam: int = 32) -> list[Segmentation]:
        """Distinct syllable splits of ``text``, each scored by its best sentence, best first.

        ``xian`` gives both ``(xi, an)`` and ``(xian,)`` with the scores of 西安 and 现.
        """
        seen: dict[tuple[str, ...], float] = {}
        for sentence in self.sentences(text, beam):
            if sentence.syllables not in seen:
                seen[sentence.syllables] = sentence.score
        ranked = sorted(seen.items(), key=lambda kv: -kv[1])
        return [Segmentation(syls, score) for syls, score in ranked[:limit]]

    def words(self, text: str, limit: int = 12, *, should_stop: Callable[[], bool] | None = None) -> list[str]:
        """Dictionary words spelled by a prefix of the input: longest prefix first, then
        by score (what an IME lists for the first word). Deduplicated."""
        letters, boundaries = normalize_pinyin(text)
        if not letters:
            return []
        edges = self._edges(letters, boundaries, should_stop)
        ranked = sorted(edges[0], key=lambda e: (-e.end, -e.logp))
        out: list[str] = []
        for edge in ranked:
            if edge.word not in out:
                out.append(edge.word)
                if len(out) >= limit:
                    break
        return out

    def hmm_sentences(
        self,
        syllables: Sequence[str],
        limit: int = 6,
        *,
        beam: int = 12,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Sentence]:
        """Viterbi over the HMM model for one syllable split, keeping the ``beam`` most
        likely characters per syllable. Raises :class:`ConversionInterrupted` if
        ``should_stop`` turns true (checked once per syllable)."""
        if self.hmm is None or not syllables:
            return []
        from Pinyin2Hanzi import viterbi

        syls = [s for s in syllables if s in self.hmm.py2hz_dict]
        if len(syls) != len(syllables):
            return []
        params = _BeamedHmm(self.hmm, lambda obs: self._hmm_states(obs, beam), should_stop)
        items = viterbi(hmm_params=params, observations=syls, path_num=limit, log=True)
        return [Sentence("".join(item.path), tuple(syls), item.score, tuple(item.path)) for item in items]

    def _hmm_states_uncached(self, observation: str, beam: int) -> list[str]:
        hmm = self.hmm
        if hmm is None:
            return []
        states = list(hmm.py2hz_dict.get(observation, ()))
        states.sort(key=lambda s: -(hmm.start(s) * hmm.emission(s, observation)))
        return states[:beam]


def _beamed_hmm_base() -> type:
    from Pinyin2Hanzi import AbstractHmmParams

    return AbstractHmmParams


class _BeamedHmm(_beamed_hmm_base()):  # type: ignore[misc]
    """The HMM tables with a character beam per syllable and a stop check per step."""

    def __init__(self, hmm: Any, states: Callable[[str], list[str]], should_stop: Callable[[], bool] | None) -> None:
        self._hmm = hmm
        self._states = states
        self._should_stop = should_stop

    def start(self, state: str) -> float:
        return self._hmm.start(state)

    def emission(self, state: str, observation: str) -> float:
        return self._hmm.emission(state, observation)

    def transition(self, from_state: str, to_state: str) -> float:
        return self._hmm.transition(from_state, to_state)

    def get_states(self, observation: str) -> list[str]:
        if self._should_stop is not None and self._should_stop():
            raise ConversionInterrupted()
        return self._states(observation)
