"""A word bigram language model for the offline decoder, read from the open-gram data
that Debian's ``sunpinyin-data`` package ships (``lm_sc.t3g`` and ``pydict_sc.bin``).

open-gram is a back-off word trigram trained on a large Simplified Chinese corpus
(71,759 words, 2.5 M bigrams, 1 M trigrams). Only its unigram and bigram levels are
read: the decoder's beam keeps one word of history. Nothing is downloaded and no
sunpinyin code runs; the two files are parsed here with numpy:

* ``pydict_sc.bin`` (sunpinyin's pinyin trie): a header of three little-endian
  ``uint32`` (word count, node count, offset of the string table); the string table
  holds each word id's text as NUL-terminated UTF-32.
* ``lm_sc.t3g`` (sunpinyin's "threaded" back-off model): ``uint32`` N and a flag
  (probabilities stored as log or not), N + 1 level sizes, a 65,536-entry float
  probability table, a 16,384-entry back-off weight table, then the levels. A node of
  levels 0 .. N-1 is three ``uint32``: ``wid:18 bow:14 | pr:16 ch_lo:16 |
  bon:23 bol:2 ch_hi:7``; its children in the next level are the nodes
  ``[ch, next node's ch)``, sorted by word id. Each level ends with a sentinel node.
  The last level holds leaves of two ``uint32``: ``wid:18 pr_lo:14 | bon:23 bol:2
  pr_hi:2``.

If the files are absent the decoder runs without this model (see :func:`find_data`);
a file that does not parse raises :class:`WordLmError` with what is wrong.
"""

from __future__ import annotations

import array
import bisect
import glob
import logging
import os
import struct
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "SENTENCE_START",
    "WordBigram",
    "WordLmError",
    "data_fingerprint",
    "find_data",
    "load_word_bigram",
    "shared_word_bigram",
]

log = logging.getLogger(__name__)

#: Where Debian (any architecture) and other distributions put sunpinyin's data.
_DATA_GLOBS = ("/usr/lib/*/sunpinyin/data", "/usr/lib/sunpinyin/data", "/usr/share/sunpinyin")
#: ``SWITCHYARD_WORD_LM``: a directory holding the two files, or ``off``.
ENV_DATA = "SWITCHYARD_WORD_LM"
_LM_FILE, _DICT_FILE = "lm_sc.t3g", "pydict_sc.bin"
#: The model's word id for a sentence boundary (its successors are sentence starts).
SENTENCE_START = 0
_PR_TABLE, _BOW_TABLE = 1 << 16, 1 << 14
_MAX_WORDS = 1 << 18  # a word id has 18 bits


class WordLmError(Exception):
    """The language model files are malformed (the message says how)."""


def find_data() -> Path | None:
    """The directory of the open-gram files: ``$SWITCHYARD_WORD_LM`` if set (``off``
    disables the model), else the first standard location holding both files."""
    configured = os.environ.get(ENV_DATA)
    if configured is not None:
        if configured.strip().lower() in ("", "off", "none", "0"):
            return None
        return Path(configured)
    for pattern in _DATA_GLOBS:
        for candidate in sorted(glob.glob(pattern)):
            path = Path(candidate)
            if (path / _LM_FILE).is_file() and (path / _DICT_FILE).is_file():
                return path
    return None


def data_fingerprint(directory: Path | None) -> str:
    """Changes when the files do (size and modification time): part of the lexicon's cache key."""
    if directory is None:
        return "none"
    parts = []
    for name in (_LM_FILE, _DICT_FILE):
        try:
            st = (directory / name).stat()
        except OSError:
            return "none"
        parts.append(f"{st.st_size}-{int(st.st_mtime)}")
    return "_".join(parts)


@attrs.frozen(eq=False)
class WordBigram:
    """``P(w2 | w1)`` for the model's words, in natural-log units. Read-only, thread-safe.

    ``ids`` maps a word's text to its id. :meth:`unigram` is ``log P(w)``;
    :meth:`association` is ``log P(w2|w1) - log P(w2)`` (the back-off weight of ``w1``
    when the pair was never seen), 0 when either word is unknown.
    """

    ids: dict[str, int]
    # Plain lists and ``array.array`` rather than numpy: a lookup is a few scalar
    # reads and a bisect, and numpy's per-call overhead would dominate it.
    _rows: dict[int, int]  # word id -> its node index in level 1
    _unigram: list[float]  # per level-1 node
    _backoff: list[float]  # per level-1 node
    _first_child: array.array[int]  # per level-1 node, plus the sentinel
    _child_ids: array.array[int]  # level 2, sorted within each parent's range
    _child_logp: array.array[float]

    def unigram(self, wid: int) -> float | None:
        row = self._rows.get(wid)
        return None if row is None else self._unigram[row]

    def association(self, w1: int, w2: int) -> float:
        rows = self._rows
        row1 = rows.get(w1)
        row2 = rows.get(w2)
        if row1 is None or row2 is None:
            return 0.0
        lo = self._first_child[row1]
        hi = self._first_child[row1 + 1]
        if lo < hi:
            at = bisect.bisect_left(self._child_ids, w2, lo, hi)
            if at < hi and self._child_ids[at] == w2:
                return self._child_logp[at] - self._unigram[row2]
        return self._backoff[row1]

    @property
    def nbytes(self) -> int:
        """Memory held by the bigram arrays (the dicts and lists add ~15 MB)."""
        return sum(a.itemsize * len(a) for a in (self._first_child, self._child_ids, self._child_logp))


def _words(path: Path) -> list[str]:
    import numpy as np

    data = path.read_bytes()
    if len(data) < 12:
        raise WordLmError(f"{path}: shorter than its header")
    count, _nodes, strings = struct.unpack_from("<3I", data, 0)
    if not 0 < count <= _MAX_WORDS or not 12 <= strings < len(data) or (len(data) - strings) % 4:
        raise WordLmError(f"{path}: header gives {count} words at offset {strings}, file has {len(data)} bytes")
    table = np.frombuffer(data, dtype="<u4", offset=strings)
    ends = np.flatnonzero(table == 0)
    if len(ends) < count:
        raise WordLmError(f"{path}: {count} words announced, {len(ends)} found")
    if table.max(initial=0) > 0x10FFFF:
        raise WordLmError(f"{path}: a word holds a value that is not a code point")
    words: list[str] = []
    start = 0
    try:
        for end in ends[:count].tolist():
            words.append(table[start:end].tobytes().decode("utf-32-le"))
            start = end + 1
    except UnicodeDecodeError as exc:
        raise WordLmError(f"{path}: word {len(words)} is not UTF-32: {exc.reason}") from None
    return words


def _levels(
    path: Path,
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32], npt.NDArray[np.float32], npt.NDArray[np.float32], bool]:
    """Level 1 nodes, level 2's ``(word id, probability index)`` columns, and the two tables."""
    import numpy as np

    data = path.read_bytes()  # transient: the arrays kept are copies in the layout lookups want
    if len(data) < 8:
        raise WordLmError(f"{path}: shorter than its header")
    order, use_log = struct.unpack_from("<2I", data, 0)
    if order < 2 or order > 8:
        raise WordLmError(f"{path}: model order {order}, expected 2..8")
    offset = 8 + 4 * (order + 1)
    if offset > len(data):
        raise WordLmError(f"{path}: shorter than its header")
    sizes = struct.unpack_from(f"<{order + 1}I", data, 8)
    leaf2 = order == 2  # the last level holds two-word leaves, not three-word nodes
    need = offset + 4 * (_PR_TABLE + _BOW_TABLE) + 12 * (sizes[0] + sizes[1]) + (8 if leaf2 else 12) * sizes[2]
    if sizes[1] < 1 or need > len(data):
        raise WordLmError(f"{path}: levels of {sizes} nodes need {need} bytes, file has {len(data)}")
    pr = np.frombuffer(data, dtype="<f4", count=_PR_TABLE, offset=offset)
    bow = np.frombuffer(data, dtype="<f4", count=_BOW_TABLE, offset=offset + 4 * _PR_TABLE)
    offset += 4 * (_PR_TABLE + _BOW_TABLE) + 12 * sizes[0]
    level1 = np.frombuffer(data, dtype="<u4", count=3 * sizes[1], offset=offset).reshape(-1, 3)
    offset += 12 * sizes[1]
    if leaf2:
        leaves = np.frombuffer(data, dtype="<u4", count=2 * sizes[2], offset=offset).reshape(-1, 2)
        level2 = np.stack([leaves[:, 0] & 0x3FFFF, (leaves[:, 0] >> 18) | (((leaves[:, 1] >> 25) & 3) << 14)], axis=1)
    else:
        nodes = np.frombuffer(data, dtype="<u4", count=3 * sizes[2], offset=offset).reshape(-1, 3)
        level2 = np.stack([nodes[:, 0] & 0x3FFFF, nodes[:, 1] & 0xFFFF], axis=1)
    return level1, level2.astype(np.uint32), pr, bow, bool(use_log)


def _log(values: npt.NDArray[np.float32], stored_as_log: bool) -> npt.NDArray[np.float32]:
    """Natural logs, with NaN and infinities (a damaged table) pinned to finite values."""
    import numpy as np

    with np.errstate(all="ignore"):
        logs = -values if stored_as_log else np.log(np.maximum(values, np.float32(1e-30)))
    return np.nan_to_num(logs, nan=-69.0, posinf=0.0, neginf=-69.0).astype(np.float32)


def load_word_bigram(directory: Path) -> WordBigram:
    """Parse the two files in ``directory`` (blocking, ~0.3 s, ~40 MB resident)."""
    import numpy as np

    words = _words(directory / _DICT_FILE)
    level1, level2, pr, bow, stored_as_log = _levels(directory / _LM_FILE)
    log_pr = _log(pr, stored_as_log)
    log_bow = _log(bow, stored_as_log)
    ids1 = level1[:, 0] & 0x3FFFF
    first_child = ((level1[:, 1] >> 16) | ((level1[:, 2] >> 25) << 16)).astype(np.int64)
    if np.any(np.diff(first_child) < 0) or first_child[-1] > len(level2):
        raise WordLmError(f"{directory / _LM_FILE}: child ranges are not monotonic")
    rows = {int(w): i for i, w in enumerate(ids1[:-1].tolist()) if w < len(words)}
    ids = {w: i for i, w in enumerate(words) if w and i in rows}
    return WordBigram(
        ids=ids,
        rows=rows,
        unigram=log_pr[level1[:, 1] & 0xFFFF].astype(float).tolist(),
        backoff=log_bow[level1[:, 0] >> 18].astype(float).tolist(),
        first_child=array.array("q", first_child.tobytes()),
        child_ids=array.array("I", np.ascontiguousarray(level2[:, 0]).tobytes()),
        child_logp=array.array("f", log_pr[level2[:, 1]].tobytes()),
    )


_shared: tuple[WordBigram | None, str] | None = None
_shared_lock = threading.Lock()


def shared_word_bigram() -> tuple[WordBigram | None, str]:
    """The process-wide model and its fingerprint, loaded on first call (blocking,
    thread-safe); ``(None, "none")`` when the data is absent or does not parse (logged
    once: the decoder then runs on its other models)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            directory = find_data()
            model: WordBigram | None = None
            if directory is not None:
                try:
                    model = load_word_bigram(directory)
                except (OSError, WordLmError, ValueError) as exc:
                    log.warning("word bigram at %s not used: %s", directory, exc)
            else:
                log.info("no word bigram (install Debian's sunpinyin-data, or set %s)", ENV_DATA)
            _shared = (model, data_fingerprint(directory) if model is not None else "none")
        return _shared
