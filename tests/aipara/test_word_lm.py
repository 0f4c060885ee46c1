"""The open-gram word bigram reader: exact values on a model written here, the real
Debian data when installed, and damaged files that must fail with WordLmError."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchyard.services.aipara.backends.word_lm import (
    SENTENCE_START,
    WordLmError,
    find_data,
    load_word_bigram,
)

PR_TABLE, BOW_TABLE = 1 << 16, 1 << 14


def write_dict(path: Path, words: list[str]) -> None:
    strings = b"".join(w.encode("utf-32-le") + b"\0\0\0\0" for w in words)
    path.write_bytes(struct.pack("<3I", len(words), 0, 12) + strings)


def write_bigram(path: Path, unigrams: dict[int, tuple[float, float]], bigrams: dict[int, dict[int, float]]) -> None:
    """A two-level model (leaves at level 2), probabilities stored directly, as
    sunpinyin's slmthread writes it: ``unigrams[wid] = (p, backoff)``."""
    pr_values: list[float] = [0.0]
    bow_values: list[float] = [1.0]

    def pr_index(p: float) -> int:
        pr_values.append(p)
        return len(pr_values) - 1

    def bow_index(b: float) -> int:
        bow_values.append(b)
        return len(bow_values) - 1

    level1: list[tuple[int, int, int]] = []
    leaves: list[tuple[int, int]] = []
    for wid in sorted(unigrams):
        p, b = unigrams[wid]
        ch = len(leaves)
        level1.append((wid | bow_index(b) << 18, pr_index(p) | (ch & 0xFFFF) << 16, (ch >> 16) << 25))
        for w2, p2 in sorted(bigrams.get(wid, {}).items()):
            idx = pr_index(p2)
            leaves.append((w2 | (idx & 0x3FFF) << 18, (idx >> 14) << 25))
    ch = len(leaves)
    level1.append((0, (ch & 0xFFFF) << 16, (ch >> 16) << 25))  # sentinel
    pr = np.zeros(PR_TABLE, "<f4")
    pr[: len(pr_values)] = pr_values
    bow = np.ones(BOW_TABLE, "<f4")
    bow[: len(bow_values)] = bow_values
    root = struct.pack("<3I", 0, 0, 0) * 2
    body = b"".join(struct.pack("<3I", *n) for n in level1) + b"".join(struct.pack("<2I", *n) for n in leaves)
    path.write_bytes(
        struct.pack("<2I", 2, 0)
        + struct.pack("<3I", 2, len(level1), len(leaves))
        + pr.tobytes()
        + bow.tobytes()
        + root
        + body
    )


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    write_dict(tmp_path / "pydict_sc.bin", ["<s>", "我们", "的", "书"])
    write_bigram(
        tmp_path / "lm_sc.t3g",
        unigrams={0: (0.1, 1.0), 1: (0.2, 0.5), 2: (0.4, 0.25), 3: (0.3, 1.0)},
        bigrams={0: {1: 0.5}, 1: {2: 0.8}, 2: {3: 0.6}},
    )
    return tmp_path


def test_reads_unigrams_bigrams_and_backoff_exactly(model_dir: Path) -> None:
    model = load_word_bigram(model_dir)
    ids = model.ids
    assert set(ids) == {"<s>", "我们", "的", "书"}
    assert model.unigram(ids["的"]) == pytest.approx(math.log(0.4), abs=1e-6)
    # seen pair: log P(w2|w1) - log P(w2)
    assert model.association(ids["我们"], ids["的"]) == pytest.approx(math.log(0.8) - math.log(0.4), abs=1e-6)
    assert model.association(SENTENCE_START, ids["我们"]) == pytest.approx(math.log(0.5) - math.log(0.2), abs=1e-6)
    # unseen pair: the back-off weight of w1
    assert model.association(ids["我们"], ids["书"]) == pytest.approx(math.log(0.5), abs=1e-6)
    assert model.association(ids["书"], ids["我们"]) == pytest.approx(0.0, abs=1e-6)
    # unknown ids associate with nothing
    assert model.association(12345, ids["书"]) == 0.0
    assert model.unigram(12345) is None


def test_find_data_honours_the_environment(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_WORD_LM", str(model_dir))
    assert find_data() == model_dir
    monkeypatch.setenv("SWITCHYARD_WORD_LM", "off")
    assert find_data() is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:5],  # torn header
        lambda b: b[: len(b) // 2],  # torn levels
        lambda b: struct.pack("<I", 99) + b[4:],  # absurd order
        lambda b: b[:8] + struct.pack("<3I", 2, 10**8, 5) + b[20:],  # lying level size
        lambda b: b"",
    ],
)
def test_damaged_model_fails_with_a_clear_error(model_dir: Path, damage) -> None:
    path = model_dir / "lm_sc.t3g"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(WordLmError, match="lm_sc.t3g"):
        load_word_bigram(model_dir)


def test_damaged_dictionary_fails_with_a_clear_error(model_dir: Path) -> None:
    path = model_dir / "pydict_sc.bin"
    path.write_bytes(struct.pack("<3I", 5, 0, 12) + "我".encode("utf-32-le") + b"\0\0\0\0")
    with pytest.raises(WordLmError, match="5 words announced"):
        load_word_bigram(model_dir)
    path.write_bytes(struct.pack("<3I", 1, 0, 12) + struct.pack("<2I", 0xD800, 0))  # a lone surrogate
    with pytest.raises(WordLmError, match="not UTF-32"):
        load_word_bigram(model_dir)


@settings(max_examples=150, deadline=None)
@given(lm=st.binary(max_size=400), words=st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_reader(
    tmp_path_factory: pytest.TempPathFactory, lm: bytes, words: bytes
) -> None:
    directory = tmp_path_factory.mktemp("garbage")
    (directory / "lm_sc.t3g").write_bytes(lm)
    (directory / "pydict_sc.bin").write_bytes(words)
    try:
        load_word_bigram(directory)
    except WordLmError:
        pass


def _real_data() -> Path:
    directory = find_data()
    if directory is None:
        reason = "Debian's sunpinyin-data is not installed (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return directory


def test_the_real_open_gram_model_knows_chinese() -> None:
    model = load_word_bigram(_real_data())
    ids = model.ids
    assert len(ids) > 60_000
    # same-sound successors the context tells apart
    assert model.association(ids["我们"], ids["的"]) > model.association(ids["我们"], ids["得"])
    assert model.association(ids["我们"], ids["在"]) > model.association(ids["我们"], ids["再"])


def test_decoder_with_the_real_model_uses_context() -> None:
    _real_data()
    from switchyard.services.aipara.backends.local import shared_decoder

    decoder = shared_decoder(beam=8)
    assert decoder.word_lm is not None
    top = [s.text for s in decoder.decode("womenzaishudianmaishu").sentences]
    assert top[0] == "我们在书店买书"
