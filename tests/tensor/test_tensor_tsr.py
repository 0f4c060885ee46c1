"""TSR codec: byte layout, round trips for every dtype and rank, hostile bytes, files."""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchyard.services.tensor import tsr
from switchyard.services.tensor.tsr import TSRError
from switchyard.services.tensor.tsr_file import load_tsr, remove_files, save_tsr
from switchyard.testing.tsr import same_tensor, tsr_arrays, tsr_blobs

DTYPES = [np.float32, np.int8, np.int32]
SHAPES = [(), (5,), (3, 4), (2, 3, 4), (2, 1, 3, 2)]


def reference_blob(array: np.ndarray) -> bytes:
    """What Tech Renaissance's own Python exporter writes (struct-packed, right-aligned)."""
    code = {np.dtype(np.float32): 1, np.dtype(np.int8): 2, np.dtype(np.int32): 3}[array.dtype]
    dims = [1] * (4 - array.ndim) + list(array.shape)
    head = struct.pack("<4s i i i i i 4i q q q", b"TSR!", 1, 64, 0, code, array.ndim, *dims, array.size, 0, 0)
    return head + array.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_dtype_and_rank_matches_the_reference_layout(dtype, shape):
    array = (np.arange(int(np.prod(shape)), dtype=np.int64) % 100 - 50).astype(dtype).reshape(shape)
    blob = tsr.encode(array)
    assert blob == reference_blob(array)
    back = tsr.decode(blob)
    assert same_tensor(back, array)


def test_right_aligned_dims():
    head = tsr.pack_header((3, 4), np.float32)
    assert struct.unpack_from("<5i4iq", head, 4)[4:] == (2, 1, 1, 3, 4, 12)
    scalar = tsr.pack_header((), np.int8)
    assert struct.unpack_from("<5i4iq", scalar, 4)[3:] == (2, 0, 1, 1, 1, 1, 1)
    assert tsr.parse_header(tsr.pack_header((7,), np.int32)).dims == (1, 1, 1, 7)


@given(tsr_arrays())
def test_round_trip_whole_blob(array):
    assert same_tensor(tsr.decode(tsr.encode(array)), array)


@given(tsr_arrays())
def test_round_trip_frames(array):
    head, data = tsr.encode_frames(array)
    assert len(head) == tsr.HEADER_SIZE
    assert same_tensor(tsr.decode_frames(head, bytes(data)), array)


@given(tsr_arrays(min_ndim=1), st.sampled_from([0, 1 << 30]))
@settings(max_examples=40, deadline=None)
def test_round_trip_through_files(array, threshold):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.tsr"
        save_tsr(path, array)
        assert path.read_bytes() == tsr.encode(array)
        assert same_tensor(load_tsr(path, mmap_threshold=threshold), array)
        assert os.listdir(tmp) == ["t.tsr"]  # no temporary left behind


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_reader(data):
    try:
        tsr.decode(data)
    except TSRError as exc:
        assert exc.field
    try:
        tsr.decode_frames(data[:64], data[64:])
    except TSRError as exc:
        assert exc.field


@given(tsr_blobs(max_side=3), st.data())
def test_corrupted_valid_blobs_raise_tsr_error_only(blob, data):
    mutated = bytearray(blob)
    pos = data.draw(st.integers(0, len(blob) - 1))
    mutated[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    for candidate in (bytes(mutated), bytes(mutated[:cut])):
        try:
            tsr.decode(candidate)
        except TSRError:
            pass


@given(tsr_blobs(max_side=3), st.data())
def test_the_header_cache_never_changes_a_verdict(blob, data):
    # parse_header remembers headers it validated; a header one byte away from a
    # remembered one must get the same verdict as from a fresh parser.
    tsr.parse_header(blob)
    mutated = bytearray(blob[: tsr.HEADER_SIZE])
    mutated[data.draw(st.integers(0, tsr.HEADER_SIZE - 1))] = data.draw(st.integers(0, 255))
    verdicts = []
    for fresh in (False, True):
        if fresh:
            tsr._PARSED.clear()
        try:
            verdicts.append(tsr.parse_header(bytes(mutated)))
        except TSRError as exc:
            verdicts.append(exc.field)
    assert verdicts[0] == verdicts[1]


def test_header_for_refuses_more_elements_than_int64_holds():
    with pytest.raises(TSRError, match="total_elements"):
        tsr.header_for((2**31 - 1,) * 4, np.float32)


def _patched(offset: int, fmt: str, value) -> bytes:
    blob = bytearray(tsr.encode(np.zeros((2, 3), np.float32)))
    struct.pack_into(fmt, blob, offset, value)
    return bytes(blob)


@pytest.mark.parametrize(
    ("blob", "field"),
    [
        (b"TSR!", "length"),
        (_patched(0, "<4s", b"TSR?"), "magic"),
        (_patched(4, "<i", 2), "version"),
        (_patched(8, "<i", 128), "header_size"),
        (_patched(12, "<i", 7), "reserved"),
        (_patched(48, "<q", 1), "reserved"),
        (_patched(16, "<i", 4), "dtype"),
        (_patched(20, "<i", 5), "ndim"),
        (_patched(20, "<i", -1), "ndim"),
        (_patched(24, "<i", 2), "dims"),  # a padding dim that is not 1
        (_patched(32, "<i", -2), "dims"),
        (_patched(40, "<q", 7), "total_elements"),
        (tsr.encode(np.zeros((2, 3), np.float32))[:-1], "length"),
        (tsr.encode(np.zeros((2, 3), np.float32)) + b"\0", "length"),
    ],
)
def test_each_violation_names_its_field(blob, field):
    with pytest.raises(TSRError) as info:
        tsr.decode(blob)
    assert info.value.field == field
    assert field in str(info.value)


def test_encoder_rejects_what_tsr_cannot_hold():
    with pytest.raises(TSRError, match="dtype"):
        tsr.encode(np.zeros(3, np.float64))
    with pytest.raises(TSRError, match="ndim"):
        tsr.encode(np.zeros((1, 1, 1, 1, 1), np.float32))
    # Big-endian input is stored little-endian, values unchanged.
    big = np.arange(6, dtype=">i4").reshape(2, 3)
    assert np.array_equal(tsr.decode(tsr.encode(big)), big)


def test_decode_is_zero_copy():
    buf = bytearray(tsr.encode(np.arange(12, dtype=np.int32).reshape(3, 4)))
    array = tsr.decode(buf)
    assert np.shares_memory(array, np.frombuffer(buf, np.uint8))
    contiguous = np.arange(10, dtype=np.float32)
    _, data = tsr.encode_frames(contiguous)
    assert np.shares_memory(np.frombuffer(data, np.uint8), contiguous)


def _backing(array: np.ndarray):
    """The object that finally owns an array's memory."""
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def test_large_files_are_mapped_copy_on_write(tmp_path):
    array = np.arange(1 << 18, dtype=np.float32).reshape(512, 512)  # 1 MiB
    path = tmp_path / "big.tsr"
    save_tsr(path, array)
    loaded = load_tsr(path)
    assert isinstance(_backing(loaded), mmap.mmap)
    assert not isinstance(_backing(load_tsr(path, mmap_threshold=1 << 30)), mmap.mmap)
    assert loaded.flags.writeable
    loaded[0, 0] = -1.0  # private mapping: the file is untouched
    assert load_tsr(path)[0, 0] == 0.0


def test_load_with_unlink_removes_the_file_and_keeps_the_data(tmp_path):
    array = np.ones((600, 600), np.int8)
    path = tmp_path / "a.tsr"
    save_tsr(path, array)
    loaded = load_tsr(path, unlink=True, mmap_threshold=1)
    assert not path.exists()
    path.write_bytes(b"garbage")  # a writer reusing the name cannot touch our mapping
    assert np.array_equal(loaded, array)


def test_truncated_and_oversized_files(tmp_path):
    path = tmp_path / "t.tsr"
    path.write_bytes(tsr.encode(np.zeros((100, 100), np.float32))[:-10])
    for threshold in (0, 1 << 30):
        with pytest.raises(TSRError) as info:
            load_tsr(path, mmap_threshold=threshold)
        assert info.value.field == "length"
    with pytest.raises(TSRError, match="limit"):
        load_tsr(path, max_size=1000)
    with pytest.raises(FileNotFoundError):
        load_tsr(tmp_path / "missing.tsr")


@pytest.mark.parametrize("set_aside", [False, True])
def test_replacing_a_mapped_file_leaves_the_mapping_alone(tmp_path, set_aside):
    # A reader holding a result loaded from r.tsr keeps its data when the server
    # writes the next r.tsr (the old file is unlinked or set aside, never rewritten).
    path = tmp_path / "r.tsr"
    first = np.arange(1 << 19, dtype=np.float32)  # 2 MiB: mapped, and space reserved
    save_tsr(path, first)
    held = load_tsr(path, mmap_threshold=1)
    assert isinstance(_backing(held), mmap.mmap)
    old: list = []
    save_tsr(path, -first, old=old if set_aside else None)
    assert len(old) == (1 if set_aside else 0)
    assert np.array_equal(load_tsr(path), -first)
    remove_files(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.tsr"]  # nothing left behind
    assert np.array_equal(held, first)


def test_a_failed_save_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "r.tsr"
    save_tsr(path, np.ones(4, np.int32))
    with pytest.raises(TSRError):
        save_tsr(path, np.ones(4, np.float64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.tsr"]
    assert np.array_equal(load_tsr(path), np.ones(4, np.int32))
