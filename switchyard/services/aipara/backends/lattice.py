"""Typed pinyin -> letters and syllable splits.

What a user types is not yet a list of syllables: ``xian`` is 先 (xian) or 西安 (xi'an),
``fangan`` is 方案 (fang'an) or 反感 (fan'gan). This module only normalises the input
and enumerates its legal splits; the decoder lets words and the language model choose
among them. The spelling conventions are pypinyin's (the lexicon is spelled by it):

* ü is ``v``: ``lv`` 绿, ``nv`` 女, ``lve`` 略, ``nve`` 虐. Typing ``lue``/``nue`` or
  ``ü``/``u:`` means the same; after j, q, x, y the ü is written ``u`` (``jue``, ``que``,
  ``xue``, ``yue``), and ``jve``/``qve``/``xve``/``yve`` are read as those.
* An apostrophe (or any non-letter) forces a syllable boundary: ``xi'an`` is xi + an.
"""

from __future__ import annotations

import heapq
import itertools
import re
from collections.abc import Collection

import attrs

__all__ = ["MAX_SYLLABLE_LETTERS", "Split", "Typed", "normalize", "split_syllables"]

MAX_SYLLABLE_LETTERS = 6
_SEPARATORS = re.compile(r"[^a-z]+")
_RESPELL = (("jv", "ju"), ("qv", "qu"), ("xv", "xu"), ("yv", "yu"), ("lue", "lve"), ("nue", "nve"))


@attrs.frozen
class Typed:
    """Normalised input: its ``letters`` and the ``boundaries`` (positions in
    ``letters``) where a separator stood. Respelling never changes the length."""

    letters: str
    boundaries: frozenset[int]

    def crosses(self, start: int, end: int, inner: Collection[int] = ()) -> bool:
        """True if a forced boundary lies strictly inside ``[start, end)`` and is not
        one of the ``inner`` syllable boundaries (absolute positions) of a word there."""
        return any(start < b < end and b not in inner for b in self.boundaries)


def normalize(text: str) -> Typed:
    """Lower-case, write ü as ``v``, respell (``jve`` -> ``jue``, ``lue`` -> ``lve``),
    drop non-letters and remember where they stood."""
    lowered = text.lower().replace("ü", "v").replace("u:", "v")
    chunks = [chunk for chunk in _SEPARATORS.split(lowered) if chunk]
    boundaries: set[int] = set()
    pos = 0
    out = []
    for index, chunk in enumerate(chunks):
        for typed, canonical in _RESPELL:
            chunk = chunk.replace(typed, canonical)
        out.append(chunk)
        pos += len(chunk)
        if index < len(chunks) - 1:
            boundaries.add(pos)
    return Typed("".join(out), frozenset(boundaries))


@attrs.frozen
class Split:
    """One way to read the input as syllables. With ``partial`` the last one is only
    the beginning of a syllable the user has not finished typing (``zh``, ``shua``)."""

    syllables: tuple[str, ...]
    partial: bool = False


def split_syllables(
    text: str | Typed,
    syllables: Collection[str],
    completions: dict[str, tuple[str, ...]] | None = None,
    *,
    limit: int = 8,
) -> list[Split]:
    """Legal syllable splits of ``text``, fewest (so longest) syllables first, at most
    ``limit``. ``kuai`` is kuai before ku + ai; ``xi'an`` has only xi + an.

    If no split covers the whole input and ``completions`` (syllable prefixes -> the
    syllables they begin) is given, splits whose last piece is such a prefix are
    returned instead, marked ``partial``.
    """
    typed = text if isinstance(text, Typed) else normalize(text)
    letters = typed.letters
    n = len(letters)
    if n == 0:
        return []
    spans = syllable_spans(typed, syllables)
    full = _enumerate(letters, spans, n, limit)
    if full or completions is None:
        return [Split(s) for s in full]
    out: list[Split] = []
    for start in _reachable_starts(spans, n):
        tail = letters[start:]
        if tail in completions and not typed.crosses(start, n):
            for head in _enumerate(letters, spans, start, limit):
                out.append(Split((*head, tail), partial=True))
    out.sort(key=lambda s: len(s.syllables))
    return out[:limit]


def syllable_spans(typed: Typed, syllables: Collection[str]) -> list[list[int]]:
    """``spans[i]``: the end positions of the legal syllables starting at ``i``."""
    letters = typed.letters
    n = len(letters)
    spans: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for length in range(1, min(MAX_SYLLABLE_LETTERS, n - i) + 1):
            if typed.crosses(i, i + length):
                break
            if letters[i : i + length] in syllables:
                spans[i].append(i + length)
    return spans


def _reachable_starts(spans: list[list[int]], n: int) -> list[int]:
    reach = [False] * (n + 1)
    reach[0] = True
    for i in range(n):
        if reach[i]:
            for end in spans[i]:
                reach[end] = True
    return [i for i in range(n) if reach[i]]


def _enumerate(letters: str, spans: list[list[int]], end: int, limit: int) -> list[tuple[str, ...]]:
    """Up to ``limit`` splits of ``letters[:end]``, fewest syllables first, then longer
    syllables first (best-first search bounded by the fewest syllables still needed)."""
    if end == 0:
        return [()]
    need: list[int] = [_NEVER] * (end + 1)  # fewest syllables from i to end
    need[end] = 0
    for i in range(end - 1, -1, -1):
        need[i] = min((need[j] + 1 for j in spans[i] if j <= end), default=_NEVER)
    if need[0] >= _NEVER:
        return []
    results: list[tuple[str, ...]] = []
    # (bound, negated cuts for the longer-first tie-break, cuts)
    heap: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = [(need[0], (0,), (0,))]
    while heap and len(results) < limit:
        _, _, cuts = heapq.heappop(heap)
        pos = cuts[-1]
        if pos == end:
            results.append(tuple(letters[a:b] for a, b in itertools.pairwise(cuts)))
            continue
        for j in spans[pos]:
            if j <= end and need[j] < _NEVER:
                new = (*cuts, j)
                heapq.heappush(heap, (len(cuts) + need[j], tuple(-c for c in new), new))
    return results


_NEVER = 1 << 30
