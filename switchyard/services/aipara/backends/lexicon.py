"""The offline decoder's data: a pinyin-keyed word lexicon and a character bigram.

Sources, all shipped inside packages (nothing is downloaded):

* words and their frequencies: ``jieba``'s ``dict.txt`` (349k entries, of which
  ~340k are all-hanzi), plus the phrases of ``pypinyin``'s phrase dictionary that
  jieba lacks (counted as the rarest jieba word);
* the pinyin of each word: ``pypinyin`` (``Style.NORMAL``, ü written ``v``), which
  reads polyphonic characters from its phrase dictionary (银行 is yin'hang, 行走 is
  xing'zou); a single character is indexed under every reading it has;
* a character bigram ``P(c2 | c1)``: ``pinyin2hanzi``'s HMM transition table; the
  character unigram it is compared with is counted from jieba's words.

Building the index from these sources takes ~10 s, so :func:`load_lexicon` does it
once and keeps a pickle under the user's cache directory
(``$XDG_CACHE_HOME/switchyard`` or ``~/.cache/switchyard``), keyed by the versions
of the source packages; later loads read only the pickle.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
import threading
from collections.abc import Iterable
from importlib import metadata, resources
from pathlib import Path

import attrs

__all__ = ["LEXICON_FORMAT", "Entry", "Lexicon", "build_lexicon", "cache_path", "load_lexicon"]

#: Bumped whenever the pickled layout or the way it is built changes.
LEXICON_FORMAT = 4

#: One lexicon entry: ``(word, log probability, syllables joined with "'")``.
Entry = tuple[str, float, str]

#: Entries kept per pinyin key (the most frequent): more never win a decode.
_PER_KEY = 24
#: Least share of a character's frequency given to a reading the HMM never saw.
_READING_FLOOR = 0.01
#: Readings left out: 嗯 (n, ng), 呣 (m), 哼 (hm, hng) would let ``qian`` split as
#: qia + n; these characters remain reachable through their vowel readings (en, m).
_NASAL_INTERJECTIONS = frozenset({"m", "n", "ng", "hm", "hng"})


@attrs.frozen(eq=False)
class Lexicon:
    """The decoder's read-only data.

    ``entries[key]`` lists the words whose pinyin, without separators, is ``key``
    (``"xian"`` holds 先, 现 and 西安), most probable first. ``pmi[c1 + c2]`` is
    ``log P(c2|c1) - log P(c2)`` for the character pairs the bigram table lists; for
    any other pair it is ``unseen[c1] - char_logp[c2]`` (0 if ``c1`` has no row).
    Use :meth:`association`.
    """

    entries: dict[str, tuple[Entry, ...]]
    syllables: frozenset[str]
    pmi: dict[str, float]
    unseen: dict[str, float]
    char_logp: dict[str, float]
    sorted_keys: tuple[str, ...]
    max_key_letters: int

    def association(self, c1: str, c2: str) -> float:
        """``log P(c2|c1) - log P(c2)`` from the character bigram."""
        value = self.pmi.get(c1 + c2)
        if value is not None:
            return value
        row = self.unseen.get(c1)
        return 0.0 if row is None else row - self.char_logp.get(c2, row)

    @property
    def completions(self) -> dict[str, tuple[str, ...]]:
        """Proper prefixes of syllables -> the syllables they begin (``"zh"`` -> zha, zhai, ...)."""
        return _completions(self.syllables)


_completion_cache: dict[frozenset[str], dict[str, tuple[str, ...]]] = {}


def _completions(syllables: frozenset[str]) -> dict[str, tuple[str, ...]]:
    cached = _completion_cache.get(syllables)
    if cached is None:
        by_prefix: dict[str, list[str]] = {}
        for syl in syllables:
            for i in range(1, len(syl)):
                by_prefix.setdefault(syl[:i], []).append(syl)
        cached = _completion_cache[syllables] = {k: tuple(sorted(v)) for k, v in by_prefix.items()}
    return cached


def _is_hanzi(word: str) -> bool:
    return all("\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" for ch in word)


def _source_versions() -> str:
    parts = []
    for dist in ("jieba", "pypinyin", "pinyin2hanzi"):
        try:
            parts.append(f"{dist}-{metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist}-absent")
    return "_".join(parts)


def cache_path() -> Path:
    """Where :func:`load_lexicon` keeps the built index."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "switchyard" / f"aipara-lexicon-v{LEXICON_FORMAT}-{_source_versions()}.pickle"


def _jieba_words() -> Iterable[tuple[str, int]]:
    path = resources.files("jieba").joinpath("dict.txt")
    with path.open(encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and _is_hanzi(parts[0]):
                yield parts[0], int(parts[1])


def build_lexicon() -> Lexicon:
    """Build the index from the source packages (blocking, ~10 s, ~300 MB transient)."""
    from pypinyin import Style, lazy_pinyin
    from pypinyin.constants import PHRASES_DICT, PINYIN_DICT
    from pypinyin.style import convert

    def spell(word: str) -> list[str] | None:
        syls = lazy_pinyin(word, style=Style.NORMAL, errors=lambda _: "?")
        if len(syls) != len(word) or any(not s.isascii() or not s.isalpha() for s in syls):
            return None
        syls = [s.lower() for s in syls]
        return None if any(s in _NASAL_INTERJECTIONS for s in syls) else syls

    def readings(ch: str) -> list[str]:
        code = PINYIN_DICT.get(ord(ch))
        flat: list[str] = []
        for reading in code.split(",") if code else ():
            plain = convert(reading, Style.NORMAL, strict=True).replace("ü", "v")
            if plain.isascii() and plain.isalpha() and plain not in flat:
                flat.append(plain)
        return flat

    counts: dict[str, int] = {}
    for word, freq in _jieba_words():
        counts[word] = counts.get(word, 0) + freq
    floor = max(1, min(counts.values()))
    for phrase in PHRASES_DICT:
        if phrase not in counts and _is_hanzi(phrase):
            counts[phrase] = floor
    total = float(sum(counts.values()))

    emission = _emission()
    char_freq: dict[str, float] = {}
    raw: dict[str, list[Entry]] = {}
    syllables: set[str] = set()
    for word, freq in counts.items():
        for ch in word:
            char_freq[ch] = char_freq.get(ch, 0.0) + freq
        if len(word) == 1:
            spellings = _reading_weights(word, readings(word), emission.get(word, {}))
            for syl, weight in spellings:
                if syl in _NASAL_INTERJECTIONS:
                    continue
                syllables.add(syl)
                raw.setdefault(syl, []).append((word, math.log(freq * weight / total), syl))
            continue
        syls = spell(word)
        if syls is None:
            continue
        syllables.update(syls)
        raw.setdefault("".join(syls), []).append((word, math.log(freq / total), "'".join(syls)))

    entries: dict[str, tuple[Entry, ...]] = {}
    for key, items in raw.items():
        items.sort(key=lambda e: -e[1])
        seen: set[tuple[str, str]] = set()
        kept: list[Entry] = []
        for entry in items:
            if (entry[0], entry[2]) not in seen:
                seen.add((entry[0], entry[2]))
                kept.append(entry)
            if len(kept) >= _PER_KEY:
                break
        entries[key] = tuple(kept)

    pmi, unseen, char_logp = _character_bigram(char_freq)
    keys = tuple(sorted(entries))
    return Lexicon(entries, frozenset(syllables), pmi, unseen, char_logp, keys, max(map(len, keys)))


def _emission() -> dict[str, dict[str, float]]:
    """``P(reading | character)`` from pinyin2hanzi's HMM, respelled as pypinyin spells."""
    path = resources.files("Pinyin2Hanzi").joinpath("data/hmm_emission.json")
    with path.open(encoding="utf-8") as f:
        table: dict[str, dict[str, float]] = json.load(f)["data"]
    return {ch: {_RESPELL.get(syl, syl): p for syl, p in row.items()} for ch, row in table.items()}


_RESPELL = {"jve": "jue", "qve": "que", "xve": "xue", "yve": "yue"}


def _reading_weights(ch: str, readings: list[str], emission: dict[str, float]) -> list[tuple[str, float]]:
    """How a character's frequency is shared among its readings: the HMM's emission
    probabilities where it has them, a small floor for readings only pypinyin knows."""
    weights = {syl: p for syl, p in emission.items() if syl.isascii() and syl.isalpha()}
    for syl in readings:
        weights[syl] = max(weights.get(syl, 0.0), _READING_FLOOR)
    if not weights:
        return []
    total = sum(weights.values())
    return [(syl, w / total) for syl, w in weights.items() if w / total >= _READING_FLOOR / 10]


def _character_bigram(char_freq: dict[str, float]) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """``(pmi, unseen, char_logp)``: PMI of the pairs the table lists, the log
    probability the table gives any other successor of a character, and the log
    unigram of each character."""
    path = resources.files("Pinyin2Hanzi").joinpath("data/hmm_transition.json")
    with path.open(encoding="utf-8") as f:
        transition: dict[str, dict[str, float]] = json.load(f)["data"]
    total = sum(char_freq.values())
    char_logp = {ch: round(math.log(f / total), 3) for ch, f in char_freq.items()}
    pmi: dict[str, float] = {}
    unseen: dict[str, float] = {}
    for c1, row in transition.items():
        default = row.get("default", 0.0)
        if default > 0:
            unseen[c1] = round(math.log(default), 3)
        for c2, p in row.items():
            if c2 == "default" or p <= 0 or c2 not in char_logp:
                continue
            pmi[c1 + c2] = round(math.log(p) - char_logp[c2], 3)
    return pmi, unseen, char_logp


_loaded: Lexicon | None = None
_load_lock = threading.Lock()


def load_lexicon(*, use_cache: bool = True) -> Lexicon:
    """The process-wide lexicon: read from the cache, or built and cached (blocking).

    Thread-safe; the first call pays the cost, later calls return the same object.
    A cache that cannot be written (read-only home) only costs the rebuild next time.
    """
    global _loaded
    with _load_lock:
        if _loaded is not None:
            return _loaded
        path = cache_path()
        lexicon: Lexicon | None = None
        if use_cache and path.exists():
            try:
                with path.open("rb") as f:
                    lexicon = pickle.load(f)
            except Exception:  # a torn or foreign file: rebuild it
                lexicon = None
            if not isinstance(lexicon, Lexicon):
                lexicon = None
        if lexicon is None:
            lexicon = build_lexicon()
            if use_cache:
                _write_cache(path, lexicon)
        _loaded = lexicon
        return lexicon


def _write_cache(path: Path, lexicon: Lexicon) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(lexicon, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new
    except OSError:
        pass
