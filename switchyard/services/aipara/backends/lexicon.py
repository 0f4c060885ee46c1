"""The offline decoder's data: a pinyin-keyed word lexicon and a character bigram.

Sources, all shipped inside packages (nothing is downloaded):

* words and their frequencies: ``jieba``'s ``dict.txt`` (349k entries, of which
  ~340k are all-hanzi), plus the phrases of ``pypinyin``'s phrase dictionary that
  jieba lacks (counted as the rarest jieba word);
* the pinyin of each word: ``pypinyin`` (``Style.NORMAL``, ü written ``v``), which
  reads polyphonic characters from its phrase dictionary (银行 is yin'hang, 行走 is
  xing'zou); a single character is indexed under every reading it has;
* a character bigram ``P(c2 | c1)``: ``pinyin2hanzi``'s HMM transition table; the
  character unigram it is compared with is counted from jieba's words;
* a word-class bigram: each jieba word carries a part-of-speech tag, and a class is
  (single character or longer word, tag), 128 in all; ``P(class2 | class1)`` and the
  sentence-start distribution come from jieba's part-of-speech HMM
  (``jieba.posseg``), whose state is (position in word, tag), so the step from the end
  state of one word to the start state of the next is exactly a class transition.
  It is what tells 的 (after a noun or adjective, before a noun) from 得 (after a verb)
  and 地 (before a verb), or the preposition 在 from the adverb 再;
* when Debian's ``sunpinyin-data`` is installed, the open-gram word bigram
  (:mod:`.word_lm`): a word it knows takes its unigram from there (a character's is
  shared among its readings as above), and carries its id for the bigram.

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

from switchyard.services.aipara.backends.word_lm import WordBigram, shared_word_bigram

__all__ = ["LEXICON_FORMAT", "Entry", "Lexicon", "build_lexicon", "cache_path", "load_lexicon"]

#: Bumped whenever the pickled layout or the way it is built changes.
LEXICON_FORMAT = 6

#: One lexicon entry: ``(word, log probability, syllables joined with "'", word class,
#: word-model id)``; class 0 is "unknown" (a word jieba has no tag for), which the
#: class bigram ignores; the id is -1 for a word the word bigram does not know (or
#: when there is none), and then the log probability is jieba's.
Entry = tuple[str, float, str, int, int]

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

    ``word_lm`` is the fingerprint of the word bigram the ids refer to (``"none"``
    without one: all ids are -1).

    ``class_pmi[c1][c2]`` is ``log P(c2|c1) - log P(c2)`` for word classes (the fourth
    field of an :data:`Entry`), ``class_start[c]`` is ``log P(c|start) - log P(c)``;
    both are 0 for class 0.
    """

    entries: dict[str, tuple[Entry, ...]]
    syllables: frozenset[str]
    pmi: dict[str, float]
    unseen: dict[str, float]
    char_logp: dict[str, float]
    sorted_keys: tuple[str, ...]
    max_key_letters: int
    class_pmi: tuple[tuple[float, ...], ...]
    class_start: tuple[float, ...]
    word_lm: str

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


def cache_path(word_lm_fingerprint: str = "none") -> Path:
    """Where :func:`load_lexicon` keeps the index built with the word bigram of that
    fingerprint (:func:`.word_lm.data_fingerprint`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    name = f"aipara-lexicon-v{LEXICON_FORMAT}-{_source_versions()}-lm{word_lm_fingerprint}.pickle"
    return Path(base) / "switchyard" / name


def _jieba_words() -> Iterable[tuple[str, int, str]]:
    """``(word, frequency, part-of-speech tag)`` for jieba's all-hanzi words."""
    path = resources.files("jieba").joinpath("dict.txt")
    with path.open(encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and _is_hanzi(parts[0]):
                yield parts[0], int(parts[1]), parts[2] if len(parts) > 2 else ""


def build_lexicon(word_lm: WordBigram | None = None, word_lm_fingerprint: str = "none") -> Lexicon:
    """Build the index from the source packages (blocking, ~10 s, ~300 MB transient),
    with unigrams and ids from ``word_lm`` for the words it knows."""
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
    tags: dict[str, str] = {}
    for word, freq, tag in _jieba_words():
        counts[word] = counts.get(word, 0) + freq
        tags.setdefault(word, tag)
    classes = _WordClasses.from_jieba()
    floor = max(1, min(counts.values()))
    for phrase in PHRASES_DICT:
        if phrase not in counts and _is_hanzi(phrase):
            counts[phrase] = floor
    total = float(sum(counts.values()))

    emission = _emission()
    lm_ids = word_lm.ids if word_lm is not None else {}

    def entry(word: str, logp: float, split: str, share: float = 1.0) -> Entry:
        wid = lm_ids.get(word, -1)
        lm_logp = word_lm.unigram(wid) if word_lm is not None and wid >= 0 else None
        if lm_logp is None:
            return (word, logp, split, classes.of(word, tags.get(word)), -1)
        return (word, lm_logp + math.log(share), split, classes.of(word, tags.get(word)), wid)

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
                raw.setdefault(syl, []).append(entry(word, math.log(freq * weight / total), syl, weight))
            continue
        syls = spell(word)
        if syls is None:
            continue
        syllables.update(syls)
        raw.setdefault("".join(syls), []).append(entry(word, math.log(freq / total), "'".join(syls)))

    entries: dict[str, tuple[Entry, ...]] = {}
    for key, items in raw.items():
        items.sort(key=lambda e: -e[1])
        seen: set[tuple[str, str]] = set()
        kept: list[Entry] = []
        for item in items:
            if (item[0], item[2]) not in seen:
                seen.add((item[0], item[2]))
                kept.append(item)
            if len(kept) >= _PER_KEY:
                break
        entries[key] = tuple(kept)

    pmi, unseen, char_logp = _character_bigram(char_freq)
    keys = tuple(sorted(entries))
    return Lexicon(
        entries,
        frozenset(syllables),
        pmi,
        unseen,
        char_logp,
        keys,
        max(map(len, keys)),
        classes.pmi(),
        classes.start(),
        word_lm_fingerprint if word_lm is not None else "none",
    )


#: Log probability given to a class transition jieba's HMM never saw (it writes
#: -3.14e100 for those, which would make one rare tag veto a sentence).
_UNSEEN_TRANSITION = math.log(1e-5)


class _WordClasses:
    """Word classes (single character or not, part-of-speech tag) and their bigram,
    read from ``jieba.posseg``'s HMM: its states are ``(B|M|E|S, tag)``, and a word
    boundary is a step from an ``E``/``S`` state to a ``B``/``S`` state."""

    def __init__(
        self, transition: dict[tuple[str, str], dict[tuple[str, str], float]], start: dict[tuple[str, str], float]
    ) -> None:
        tags = sorted({tag for _, tag in transition})
        #: index 0 is the unknown class
        self.names: list[tuple[bool, str]] = [(False, "")] + [(single, tag) for single in (True, False) for tag in tags]
        self.index = {name: i for i, name in enumerate(self.names)}
        self._transition = transition
        self._start = start

    @classmethod
    def from_jieba(cls) -> _WordClasses:
        from jieba.posseg.prob_start import P as start
        from jieba.posseg.prob_trans import P as transition

        return cls(transition, start)

    def of(self, word: str, tag: str | None) -> int:
        return self.index.get((len(word) == 1, tag or ""), 0)

    @staticmethod
    def _end_state(single: bool, tag: str) -> tuple[str, str]:
        return ("S" if single else "E", tag)

    @staticmethod
    def _start_state(single: bool, tag: str) -> tuple[str, str]:
        return ("S" if single else "B", tag)

    def _conditional(self) -> list[list[float]]:
        """``P(c2 | c1)`` over the known classes (row and column 0 unused)."""
        n = len(self.names)
        rows = [[0.0] * n for _ in range(n)]
        for i, (single1, tag1) in enumerate(self.names[1:], 1):
            row = self._transition.get(self._end_state(single1, tag1), {})
            for j, (single2, tag2) in enumerate(self.names[1:], 1):
                rows[i][j] = math.exp(
                    max(row.get(self._start_state(single2, tag2), _UNSEEN_TRANSITION), _UNSEEN_TRANSITION)
                )
            total = sum(rows[i])
            rows[i] = [p / total for p in rows[i]]
        return rows

    def _stationary(self, conditional: list[list[float]]) -> list[float]:
        """How often each class occurs at a word boundary, by power iteration."""
        n = len(self.names)
        share = [0.0] + [1.0 / (n - 1)] * (n - 1)
        for _ in range(200):
            share = [sum(share[i] * conditional[i][j] for i in range(1, n)) for j in range(n)]
        return share

    def pmi(self) -> tuple[tuple[float, ...], ...]:
        conditional = self._conditional()
        log_share = [math.log(p) if p > 0 else 0.0 for p in self._stationary(conditional)]
        n = len(self.names)
        return tuple(
            tuple(0.0 if i == 0 or j == 0 else round(math.log(conditional[i][j]) - log_share[j], 3) for j in range(n))
            for i in range(n)
        )

    def start(self) -> tuple[float, ...]:
        conditional = self._conditional()
        share = self._stationary(conditional)
        probs = [0.0] + [
            math.exp(max(self._start.get(self._start_state(s, t), _UNSEEN_TRANSITION), _UNSEEN_TRANSITION))
            for s, t in self.names[1:]
        ]
        total = sum(probs)
        return tuple(
            0.0 if j == 0 or share[j] <= 0 else round(math.log(probs[j] / total) - math.log(share[j]), 3)
            for j in range(len(self.names))
        )


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
        word_lm, fingerprint = shared_word_bigram()
        path = cache_path(fingerprint)
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
            lexicon = build_lexicon(word_lm, fingerprint)
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
