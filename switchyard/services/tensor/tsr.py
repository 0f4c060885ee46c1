"""TSR tensors: Tech Renaissance's binary tensor format, as a sans-IO codec over numpy.

A TSR blob is a 64-byte little-endian header followed by the raw element data in C
order::

    offset size field
         0    4 magic "TSR!"
         4    4 int32 version = 1
         8    4 int32 header_size = 64
        12    4 int32 reserved = 0
        16    4 int32 dtype: 1 float32, 2 int8, 3 int32
        20    4 int32 ndim, 0..4
        24   16 int32 dims[4] (N, C, H, W), right-aligned: shape (3, 4) -> 1,1,3,4
        40    8 int64 total_elements
        48   16 two int64 reserved = 0

What a caller may rely on:

* :func:`decode` and :func:`decode_frames` never copy the data: the array they return
  is a view over the buffer they were given (read-only if the buffer is).
* :func:`encode_frames` returns the header and a zero-copy view of the array's data
  (one copy only when the array is not already little-endian C-contiguous).
* Every malformed input raises :class:`TSRError` (a ``ValueError``) whose ``field``
  names the header field at fault: ``length``, ``magic``, ``version``,
  ``header_size``, ``reserved``, ``dtype``, ``ndim``, ``dims`` or ``total_elements``.
  No other exception escapes the parser, whatever the bytes.

This module does no I/O; memory-mapped file loading lives in
:mod:`switchyard.services.tensor.tsr_file`.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

__all__ = [
    "DTYPE_CODES",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_NDIM",
    "VERSION",
    "TSRError",
    "TSRHeader",
    "decode",
    "decode_frames",
    "encode",
    "encode_frames",
    "header_for",
    "pack_header",
    "parse_header",
]

MAGIC = b"TSR!"
VERSION = 1
HEADER_SIZE = 64
MAX_NDIM = 4
_MAX_DIM = 2**31 - 1  # dims are int32 on the wire
_MAX_TOTAL = 2**63 - 1  # total_elements is int64 on the wire

_STRUCT = struct.Struct("<4s5i4iqqq")
assert _STRUCT.size == HEADER_SIZE

#: TSR dtype code -> numpy dtype (little-endian on every host).
DTYPE_CODES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f4"),
    2: np.dtype("i1"),
    3: np.dtype("<i4"),
}
_CODE_OF = {dtype: code for code, dtype in DTYPE_CODES.items()}


class TSRError(ValueError):
    """A TSR header or payload is malformed; ``field`` names the field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"TSR {field}: {message}")
        self.field = field
        self.message = message


@attrs.frozen
class TSRHeader:
    """A validated TSR header: element type and shape (0 to 4 dimensions)."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    @property
    def code(self) -> int:
        """The TSR dtype code (1 float32, 2 int8, 3 int32)."""
        return _CODE_OF[self.dtype]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dims(self) -> tuple[int, int, int, int]:
        """The shape right-aligned into N, C, H, W with leading 1s."""
        padded = (1,) * (MAX_NDIM - len(self.shape)) + self.shape
        return padded  # type: ignore[return-value]

    @property
    def total_elements(self) -> int:
        return math.prod(self.shape)  # Python ints: exact, and 1 for a scalar

    @property
    def data_size(self) -> int:
        """Bytes of element data that follow the header."""
        return math.prod(self.shape) * self.dtype.itemsize

    def pack(self) -> bytes:
        """The 64 header bytes."""
        return _pack(self.shape, self.code)


@functools.lru_cache(maxsize=256)
def _pack(shape: tuple[int, ...], code: int) -> bytes:
    # A session sends the same few shapes over and over: pack each once.
    n, c, h, w = (1,) * (MAX_NDIM - len(shape)) + shape
    return _STRUCT.pack(MAGIC, VERSION, HEADER_SIZE, 0, code, len(shape), n, c, h, w, math.prod(shape), 0, 0)


def _tsr_dtype(dtype: Any) -> np.dtype[Any]:
    """The little-endian TSR dtype equal to ``dtype`` (any byte order), or TSRError."""
    dt = np.dtype(dtype)
    for candidate in DTYPE_CODES.values():
        if dt == candidate or dt == candidate.newbyteorder(">"):
            return candidate
    raise TSRError("dtype", f"{dt} is not storable in TSR (float32, int8 or int32 only)")


def header_for(shape: Sequence[int], dtype: Any) -> TSRHeader:
    """A header for an array of ``shape`` and ``dtype``; TSRError if TSR cannot hold it."""
    tsr_dtype = _tsr_dtype(dtype)
    shape = tuple(int(d) for d in shape)
    if len(shape) > MAX_NDIM:
        raise TSRError("ndim", f"{len(shape)} dimensions; TSR holds 0 to {MAX_NDIM}")
    for d in shape:
        if not 0 <= d <= _MAX_DIM:
            raise TSRError("dims", f"dimension {d} of shape {shape} is outside 0..{_MAX_DIM}")
    if math.prod(shape) > _MAX_TOTAL:
        raise TSRError("total_elements", f"shape {shape} holds more than {_MAX_TOTAL} elements")
    return TSRHeader(tsr_dtype, shape)


def pack_header(shape: Sequence[int], dtype: Any) -> bytes:
    """The 64 header bytes for an array of ``shape`` and ``dtype``."""
    return header_for(shape, dtype).pack()


def parse_header(buf: Any) -> TSRHeader:
    """Validate and parse the first 64 bytes of ``buf`` (any bytes-like object).

    Only the header is checked here; :func:`decode` also checks the data length.
    """
    try:
        view = memoryview(buf).cast("B")
    except TypeError as exc:
        raise TSRError("length", f"not a contiguous bytes-like object: {exc}") from None
    if len(view) < HEADER_SIZE:
        raise TSRError("length", f"{len(view)} bytes, shorter than the {HEADER_SIZE}-byte header")
    raw = bytes(view[:HEADER_SIZE])
    header = _PARSED.get(raw)
    if header is None:
        header = _parse(raw)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[raw] = header
    return header


#: Headers already validated, by their 64 bytes: a session repeats a few shapes, and
#: a hit skips the field checks (only a header that passed them is ever stored).
_PARSED: dict[bytes, TSRHeader] = {}
_PARSED_MAX = 256


def _parse(raw: bytes) -> TSRHeader:
    (magic, version, header_size, reserved0, code, ndim, n, c, h, w, total, reserved1, reserved2) = _STRUCT.unpack_from(
        raw
    )
    if magic != MAGIC:
        raise TSRError("magic", f"expected {MAGIC!r}, got {bytes(magic)!r}")
    if version != VERSION:
        raise TSRError("version", f"expected {VERSION}, got {version}")
    if header_size != HEADER_SIZE:
        raise TSRError("header_size", f"expected {HEADER_SIZE}, got {header_size}")
    if reserved0 or reserved1 or reserved2:
        raise TSRError("reserved", f"reserved fields must be 0, got {reserved0}, {reserved1}, {reserved2}")
    dtype = DTYPE_CODES.get(code)
    if dtype is None:
        raise TSRError("dtype", f"unknown code {code} (1 float32, 2 int8, 3 int32)")
    if not 0 <= ndim <= MAX_NDIM:
        raise TSRError("ndim", f"{ndim} is outside 0..{MAX_NDIM}")
    dims = (n, c, h, w)
    if any(d < 0 for d in dims):
        raise TSRError("dims", f"negative dimension in {dims}")
    if any(d != 1 for d in dims[: MAX_NDIM - ndim]):
        raise TSRError("dims", f"{dims} with ndim {ndim}: the {MAX_NDIM - ndim} leading dims must be 1")
    shape = dims[MAX_NDIM - ndim :]
    expected = 1
    for d in shape:
        expected *= d
    if total != expected:
        raise TSRError("total_elements", f"header says {total}, dims {dims} give {expected}")
    return TSRHeader(dtype, tuple(shape))


def decode(buf: Any) -> np.ndarray:
    """The array stored in a whole TSR blob (header + data), as a zero-copy view.

    ``buf`` may be bytes, bytearray, memoryview or an mmap; its length must be
    exactly header + data (``length`` error otherwise).
    """
    header = parse_header(buf)
    view = memoryview(buf).cast("B")
    expected = HEADER_SIZE + header.data_size
    if len(view) != expected:
        raise TSRError(
            "length",
            f"{len(view)} bytes, expected {expected} ({HEADER_SIZE} header + "
            f"{header.total_elements} x {header.dtype.itemsize}-byte {header.dtype.name})",
        )
    return _view(header, view[HEADER_SIZE:])


def decode_frames(header_frame: Any, data_frame: Any) -> np.ndarray:
    """The array from a separate 64-byte header frame and raw data frame (zero-copy)."""
    try:
        hview = memoryview(header_frame).cast("B")
        dview = memoryview(data_frame).cast("B")
    except TypeError as exc:
        raise TSRError("length", f"not a contiguous bytes-like object: {exc}") from None
    if len(hview) != HEADER_SIZE:
        raise TSRError("length", f"header frame is {len(hview)} bytes, expected {HEADER_SIZE}")
    header = parse_header(hview)
    count = math.prod(header.shape)
    if len(dview) != count * header.dtype.itemsize:
        raise TSRError(
            "length",
            f"data frame is {len(dview)} bytes, header needs {header.data_size} "
            f"({count} x {header.dtype.itemsize}-byte {header.dtype.name})",
        )
    return np.frombuffer(dview, dtype=header.dtype, count=count).reshape(header.shape)


def _view(header: TSRHeader, data: memoryview) -> np.ndarray:
    return np.frombuffer(data, dtype=header.dtype, count=math.prod(header.shape)).reshape(header.shape)


@functools.lru_cache(maxsize=256)
def _cached_header(shape: tuple[int, ...], dtype: np.dtype[Any]) -> TSRHeader:
    return header_for(shape, dtype)


def _wire_array(array: Any) -> tuple[TSRHeader, np.ndarray]:
    arr = np.asarray(array)
    header = _cached_header(arr.shape, arr.dtype)  # TSRError is not cached: it re-raises
    # No copy when the array already is little-endian and C-contiguous.
    arr = np.ascontiguousarray(arr, dtype=header.dtype)
    return header, arr


def encode_frames(array: Any) -> tuple[bytes, memoryview]:
    """``(header, data)``: 64 header bytes and a byte view of the array's data.

    The data view shares memory with ``array`` whenever ``array`` is already a
    little-endian C-contiguous array of a TSR dtype, so it can go out zero-copy.
    """
    header, arr = _wire_array(array)
    data = arr.data if arr.size else arr.reshape(-1).data  # a cast refuses a 0 in the shape
    return header.pack(), memoryview(data).cast("B")


def encode(array: Any) -> bytes:
    """A whole TSR blob (header + data) for ``array``."""
    head, data = encode_frames(array)
    return b"".join((head, data))
