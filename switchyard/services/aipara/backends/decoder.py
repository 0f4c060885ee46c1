"""The offline convert decoder: a word lattice over typed pinyin, searched with a
language model.

Pure, synchronous, CPU-bound code; callers on Trio run it in ``trio.to_thread``.

1. The input is normalised (:mod:`.lattice`): letters, forced boundaries.
2. Word lattice: every lexicon word whose pinyin letters equal a substring of the
   input is an edge from its start to its end (words carry their syllable split, so a
   forced boundary inside a word must fall between two of its syllables). Only edges
   on some path from the start to the end are kept. If no path covers the input, the
   tail may be an unfinished syllable (``nihaoshij``): words whose last syllable begins
   with what was typed are edges to the end.
3. Search: a beam over positions scores word sequences with a word unigram (the
   lexicon's frequencies), a per-word bonus that prefers fewer, longer words, and at
   each word boundary: the word bigram when there is one (:mod:`.word_lm`;
   ``log P(w2|w1) - log P(w2)``, with a penalty for a word it does not know), a
   character bigram (``log P(c2|c1) - log P(c2)``, which also smooths sequences of
   single characters the lexicon has no word for) and a word-class bigram.

:meth:`Decoder.decode` returns several distinct whole-input sentences best first and
the word candidates for the start of the input.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

import attrs

from switchyard.services.aipara.backends.lattice import Typed, normalize, split_syllables
from switchyard.services.aipara.backends.lexicon import Lexicon
from switchyard.services.aipara.backends.word_lm import SENTENCE_START, WordBigram

__all__ = ["ConversionInterrupted", "Decoder", "DecoderConfig", "Decoding", "Sentence"]


class ConversionInterrupted(Exception):
    """Raised inside a decode when its ``should_stop`` callback says so."""


@attrs.frozen
class DecoderConfig:
    """The search's knobs; the defaults were chosen on the dev split of the benchmark,
    with the word bigram present (:meth:`without_word_lm` gives the ones for without)."""

    #: Hypotheses kept per input position (distinct texts).
    beam: int = 8
    #: Lexicon entries tried per pinyin key (the most frequent).
    per_key: int = 8
    #: Weight of the character bigram at word boundaries.
    bigram_weight: float = 0.2
    #: Weight of the word bigram at word boundaries.
    word_lm_weight: float = 0.7
    #: Weight of the word bigram's sentence-start distribution for the first word.
    word_lm_start_weight: float = 0.5
    #: Weight of the word bigram's sentence-end distribution for the last word.
    word_lm_end_weight: float = 0.5
    #: Added to a word the word bigram does not know (a log-probability).
    unknown_word_penalty: float = -2.0
    #: Weight of the word-class bigram at word boundaries.
    class_weight: float = 0.0
    #: Weight of the word-class distribution at the start of the input.
    class_start_weight: float = 0.0
    #: Added per word (a log-probability): negative favours fewer, longer words.
    word_bonus: float = -1.5
    #: Keys scanned per start position when completing an unfinished last syllable.
    prefix_scan: int = 256

    def __attrs_post_init__(self) -> None:
        if self.beam < 1 or self.per_key < 1 or self.prefix_scan < 0:
            raise ValueError("beam and per_key must be >= 1, prefix_scan >= 0")

    @classmethod
    def without_word_lm(cls, **changes: Any) -> DecoderConfig:
        """The defaults chosen for a decoder with no word bigram."""
        base: dict[str, Any] = {"bigram_weight": 0.3, "class_weight": 0.3, "class_start_weight": 0.3, "word_bonus": 0.0}
        return cls(**{**base, **changes})


@attrs.frozen
class Sentence:
    """A whole-input candidate: its text, the words and syllables it spells, its log score.

    With an unfinished last syllable, the last of ``syllables`` is the completed one.
    """

    text: str
    words: tuple[str, ...]
    syllables: tuple[str, ...]
    score: float


@attrs.frozen
class Decoding:
    """What one decode found: ``sentences`` best first (distinct texts), ``words``
    spelled by a prefix of the input (longest first, then most frequent)."""

    sentences: tuple[Sentence, ...]
    words: tuple[str, ...]


# A lattice edge: (end, word, logp, syllables "a'b", word class, word-model id).
_Edge = tuple[int, str, float, str, int, int]
# A hypothesis: (score, words, syllables "a'b" per word, class and word-model id of the last word).
_Hyp = tuple[float, tuple[str, ...], tuple[str, ...], int, int]


class Decoder:
    """Decodes typed pinyin over a :class:`~.lexicon.Lexicon` and, if given, the word
    bigram its ids refer to (``word_lm`` with that ``fingerprint``: a lexicon built
    with another model, or with none, decodes without it). Thread-safe (read-only).

    ``config`` defaults to :class:`DecoderConfig` with the model,
    :meth:`DecoderConfig.without_word_lm` without.
    """

    def __init__(
        self,
        lexicon: Lexicon,
        config: DecoderConfig | None = None,
        word_lm: WordBigram | None = None,
        *,
        word_lm_fingerprint: str = "none",
    ) -> None:
        self.lexicon = lexicon
        usable = word_lm is not None and lexicon.word_lm != "none" and lexicon.word_lm == word_lm_fingerprint
        self.word_lm = word_lm if usable else None
        self.config = config or (DecoderConfig() if self.word_lm is not None else DecoderConfig.without_word_lm())
        self._completions = lexicon.completions

    # -- lattice ----------------------------------------------------------------------

    def _fits(self, typed: Typed, start: int, end: int, split: str) -> bool:
        if not typed.boundaries:
            return True
        inner: set[int] = set()
        pos = start
        for syl in split.split("'")[:-1]:
            pos += len(syl)
            inner.add(pos)
        return not typed.crosses(start, end, inner)

    def _edges(self, typed: Typed, should_stop: Callable[[], bool] | None) -> tuple[list[list[_Edge]], bool]:
        letters = typed.letters
        n = len(letters)
        entries = self.lexicon.entries
        per_key = self.config.per_key
        longest = self.lexicon.max_key_letters
        edges: list[list[_Edge]] = [[] for _ in range(n)]
        for i in range(n):
            if should_stop is not None and should_stop():
                raise ConversionInterrupted()
            row = edges[i]
            for j in range(i + 1, min(n, i + longest) + 1):
                found = entries.get(letters[i:j])
                if found:
                    for word, logp, split, cls, wid in found[:per_key]:
                        if self._fits(typed, i, j, split):
                            row.append((j, word, logp, split, cls, wid))
        if _reaches_end(edges, n):
            return _prune(edges, n), False
        self._add_prefix_edges(typed, edges)
        return _prune(edges, n), True

    def _add_prefix_edges(self, typed: Typed, edges: list[list[_Edge]]) -> None:
        """Edges to the end for an unfinished last syllable: words whose letters begin
        with the tail and whose last syllable is the one cut short."""
        letters = typed.letters
        n = len(letters)
        reach = _forward_reach(edges, n)
        keys = self.lexicon.sorted_keys
        entries = self.lexicon.entries
        per_key = self.config.per_key
        for i in range(n):
            if not reach[i] or n - i > self.lexicon.max_key_letters or typed.crosses(i, n):
                continue
            tail = letters[i:]
            found: dict[str, _Edge] = {}
            # Single syllables the tail begins (``j`` -> ji, jia, jie, ...).
            for syl in self._completions.get(tail, ()):
                for word, logp, split, cls, wid in entries.get(syl, ())[:per_key]:
                    if word not in found or found[word][2] < logp:
                        found[word] = (n, word, logp, split, cls, wid)
            # Longer words whose last syllable is the unfinished one.
            at = bisect.bisect_left(keys, tail)
            for key in keys[at : at + self.config.prefix_scan]:
                if not key.startswith(tail):
                    break
                if key == tail:
                    continue
                for word, logp, split, cls, wid in entries[key][:per_key]:
                    head = len(split) - len(split.rsplit("'", 1)[-1]) - split.count("'")
                    if head < len(tail) and word not in found and self._fits(typed, i, n, split):
                        found[word] = (n, word, logp, split, cls, wid)
            edges[i].extend(sorted(found.values(), key=lambda e: -e[2])[: per_key * 4])

    # -- search -------------------------------------------------------------------------

    def decode(self, text: str, limit: int = 8, *, should_stop: Callable[[], bool] | None = None) -> Decoding:
        """The best ``limit`` sentences and the word candidates for ``text``.

        Empty if the input cannot be spelled with pinyin. Raises
        :class:`ConversionInterrupted` if ``should_stop`` turns true (checked once per
        input position).
        """
        typed = normalize(text)
        n = len(typed.letters)
        if n == 0:
            return Decoding((), ())
        edges, _partial = self._edges(typed, should_stop)
        cfg = self.config
        association = self.lexicon.association
        class_pmi = self.lexicon.class_pmi
        class_start = self.lexicon.class_start
        weight = cfg.bigram_weight
        class_weight = cfg.class_weight
        start_weight = cfg.class_start_weight
        bonus = cfg.word_bonus
        word_pair = self._word_pair_scorer()
        lm_start = cfg.word_lm_start_weight
        unknown = cfg.unknown_word_penalty if self.word_lm is not None else 0.0
        beam_width = max(cfg.beam, limit)
        beams: list[dict[str, _Hyp]] = [{} for _ in range(n + 1)]
        beams[0][""] = (0.0, (), (), 0, SENTENCE_START)
        for i in range(n):
            here = beams[i]
            if not here or not edges[i]:
                continue
            if should_stop is not None and should_stop():
                raise ConversionInterrupted()
            hyps = sorted(here.items(), key=lambda kv: -kv[1][0])[:beam_width]
            for end, word, logp, split, cls, wid in edges[i]:
                target = beams[end]
                first = word[0]
                gain = logp + bonus + (unknown if wid < 0 else 0.0)
                for text_so_far, (score, words, splits, last, last_wid) in hyps:
                    new_score = score + gain
                    if text_so_far:
                        new_score += weight * association(text_so_far[-1], first)
                        if class_weight:
                            new_score += class_weight * class_pmi[last][cls]
                        if word_pair is not None and wid >= 0 and last_wid >= 0:
                            new_score += word_pair(last_wid, wid)
                    else:
                        if start_weight:
                            new_score += start_weight * class_start[cls]
                        if word_pair is not None and wid >= 0:
                            new_score += lm_start * word_pair(SENTENCE_START, wid)
                    new_text = text_so_far + word
                    old = target.get(new_text)
                    if old is None or old[0] < new_score:
                        target[new_text] = (new_score, (*words, word), (*splits, split), cls, wid)
        finals = beams[n]
        if word_pair is not None and cfg.word_lm_end_weight:
            end_weight = cfg.word_lm_end_weight
            finals = {
                text_: (hyp[0] + end_weight * word_pair(hyp[4], SENTENCE_START), *hyp[1:]) if hyp[4] >= 0 else hyp
                for text_, hyp in finals.items()
            }
        ranked = sorted(finals.items(), key=lambda kv: -kv[1][0])
        sentences = [
            Sentence(text_, words, tuple("'".join(splits).split("'")), score)
            for text_, (score, words, splits, _cls, _wid) in ranked
        ]
        return Decoding(_diversify(sentences, limit), self._first_words(edges))

    def _word_pair_scorer(self) -> Callable[[int, int], float] | None:
        """The weighted word bigram association, memoised for one decode (the same
        pairs recur across the beam)."""
        model = self.word_lm
        if model is None:
            return None
        weight = self.config.word_lm_weight
        association = model.association
        memo: dict[tuple[int, int], float] = {}

        def score(w1: int, w2: int) -> float:
            value = memo.get((w1, w2))
            if value is None:
                value = memo[(w1, w2)] = weight * association(w1, w2)
            return value

        return score

    @staticmethod
    def _first_words(edges: list[list[_Edge]]) -> tuple[str, ...]:
        if not edges:
            return ()
        ranked = sorted(edges[0], key=lambda e: (-e[0], -e[2]))
        out: dict[str, None] = {}
        for _end, word, _logp, _split, _cls, _wid in ranked:
            out.setdefault(word, None)
        return tuple(out)

    def splits(self, text: str, limit: int = 8) -> list[tuple[str, ...]]:
        """The legal syllable splits of ``text`` (see :func:`.lattice.split_syllables`)."""
        return [s.syllables for s in split_syllables(text, self.lexicon.syllables, self._completions, limit=limit)]


#: Where the best sentence of another syllable split goes in the list (0-based).
_ALTERNATIVE_SPLIT_RANK = 2


def _diversify(sentences: list[Sentence], limit: int) -> tuple[Sentence, ...]:
    """The ``limit`` best, except that the best sentence of a different syllable split
    (``xian``: 西安 beside 先, 现) is moved up to rank 3 if it is not in the top 3."""
    top = sentences[:limit]
    head = top[:_ALTERNATIVE_SPLIT_RANK]
    if not head or len(top) <= _ALTERNATIVE_SPLIT_RANK:
        return tuple(top)
    splits = {s.syllables for s in sentences[: _ALTERNATIVE_SPLIT_RANK + 1]}
    other = next((s for s in sentences if s.syllables not in splits), None)
    if other is None:
        return tuple(top)
    rest = [s for s in top[_ALTERNATIVE_SPLIT_RANK:] if s is not other]
    return tuple([*head, other, *rest][:limit])


def _forward_reach(edges: list[list[_Edge]], n: int) -> list[bool]:
    reach = [False] * (n + 1)
    reach[0] = True
    for i in range(n):
        if reach[i]:
            for edge in edges[i]:
                reach[edge[0]] = True
    return reach


def _reaches_end(edges: list[list[_Edge]], n: int) -> bool:
    return _forward_reach(edges, n)[n]


def _prune(edges: list[list[_Edge]], n: int) -> list[list[_Edge]]:
    """Keep only edges on a path from 0 to ``n``."""
    forward = _forward_reach(edges, n)
    backward = [False] * (n + 1)
    backward[n] = True
    for i in range(n - 1, -1, -1):
        backward[i] = any(backward[e[0]] for e in edges[i])
    return [[e for e in row if backward[e[0]]] if forward[i] and backward[i] else [] for i, row in enumerate(edges)]
