"""How request bytes become a model's input tensor (sans-IO).

A model declares, in the manifest, how one *sample* is encoded on the wire: an
element ``dtype`` (little-endian), a per-sample ``shape`` and a linear map
``value = raw * scale + offset``. A task's ``params`` may override any of the four
(``{"dtype": "float32", "shape": "8,8", "scale": "0.0627", "offset": "0"}``); other
params are left for the model's own use. :func:`decode_rows` turns bytes holding a
whole number of samples into a float32 array ``[rows, *shape]``.

Everything here raises :class:`TensorError` (a ``ValueError``) with a message fit to
send back to the peer; nothing else escapes for any input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs
import numpy as np

__all__ = [
    "DTYPES",
    "MAX_SAMPLE_ELEMENTS",
    "InputSpec",
    "TensorError",
    "decode_rows",
    "parse_shape",
]

#: Element types a sample may be encoded in; all little-endian.
DTYPES: Mapping[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in {
        "uint8": "u1",
        "int8": "i1",
        "uint16": "<u2",
        "int16": "<i2",
        "uint32": "<u4",
        "int32": "<i4",
        "int64": "<i8",
        "float16": "<f2",
        "float32": "<f4",
        "float64": "<f8",
    }.items()
}

#: Upper bound on elements per sample, so a ``shape`` param cannot ask for absurd sizes.
MAX_SAMPLE_ELEMENTS = 1 << 26

_OVERRIDABLE = ("dtype", "shape", "scale", "offset")


class TensorError(ValueError):
    """Bytes or parameters that do not describe a valid input tensor."""


def parse_shape(value: str | Sequence[int]) -> tuple[int, ...]:
    """A per-sample shape from ``"8,8"``, ``"[8, 8]"``, ``"64"`` or a sequence of ints.

    Every dimension must be a positive integer; the product at most
    :data:`MAX_SAMPLE_ELEMENTS`.
    """
    if isinstance(value, str):
        text = value.strip().removeprefix("[").removesuffix("]").strip()
        if not text:
            raise TensorError(f"shape {value!r} is empty")
        try:
            dims = tuple(int(part.strip()) for part in text.split(","))
        except ValueError:
            raise TensorError(f"shape {value!r} is not a comma-separated list of integers") from None
    else:
        if isinstance(value, (bytes, bytearray)) or not isinstance(value, Sequence):
            raise TensorError(f"shape must be a list of integers, not {type(value).__name__}")
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
            raise TensorError(f"shape {list(value)!r} must hold integers only")
        dims = tuple(int(d) for d in value)
    if not dims:
        raise TensorError("shape must have at least one dimension")
    if any(d <= 0 for d in dims):
        raise TensorError(f"shape {list(dims)} has a dimension that is not positive")
    if math.prod(dims) > MAX_SAMPLE_ELEMENTS:
        raise TensorError(f"shape {list(dims)} exceeds {MAX_SAMPLE_ELEMENTS} elements per sample")
    return dims


def _check_dtype(_inst: object, _attr: object, value: str) -> None:
    if not isinstance(value, str) or value not in DTYPES:
        raise TensorError(f"dtype {value!r} is not one of {', '.join(DTYPES)}")


def _check_finite(_inst: object, attr: attrs.Attribute, value: float) -> None:
    if not math.isfinite(value):
        raise TensorError(f"{attr.name} must be a finite number, not {value!r}")


@attrs.frozen
class InputSpec:
    """How one sample is laid out in request bytes. Immutable; validated on creation."""

    dtype: str = attrs.field(default="float32", validator=_check_dtype)
    shape: tuple[int, ...] = attrs.field(default=(1,), converter=parse_shape)
    scale: float = attrs.field(default=1.0, converter=float, validator=_check_finite)
    offset: float = attrs.field(default=0.0, converter=float, validator=_check_finite)

    @property
    def elements(self) -> int:
        """Elements in one sample."""
        return math.prod(self.shape)

    @property
    def sample_bytes(self) -> int:
        """Bytes one sample occupies on the wire."""
        return self.elements * DTYPES[self.dtype].itemsize

    def describe(self) -> str:
        """``"64 x uint8, shape [64]"``, for error messages."""
        return f"{self.elements} x {self.dtype}, shape {list(self.shape)}"

    def with_params(self, params: Mapping[str, str]) -> InputSpec:
        """This spec with ``dtype``/``shape``/``scale``/``offset`` taken from ``params``.

        Other keys are ignored. Raises :class:`TensorError` naming the bad parameter.
        """
        changes: dict[str, object] = {}
        for key in _OVERRIDABLE:
            if key not in params:
                continue
            raw = params[key]
            if key in ("scale", "offset"):
                try:
                    changes[key] = float(raw)
                except (TypeError, ValueError):
                    raise TensorError(f"params.{key} {raw!r} is not a number") from None
            else:
                changes[key] = raw.strip() if isinstance(raw, str) else raw
        if not changes:
            return self
        try:
            return attrs.evolve(self, **changes)  # type: ignore[arg-type]  # validated by InputSpec's own validators
        except TensorError as exc:
            raise TensorError(f"params: {exc}") from None


def decode_rows(data: bytes | bytearray | memoryview, spec: InputSpec, rows: int | None = None) -> np.ndarray:
    """Decode ``data`` into a float32 array ``[rows, *spec.shape]``.

    ``rows=None`` accepts any whole number of samples (at least one); an int demands
    exactly that many. The bytes are not copied before the final float conversion.
    """
    size = memoryview(data).nbytes
    per = spec.sample_bytes
    if rows is None:
        if size == 0 or size % per:
            raise TensorError(
                f"input has {size} bytes, not a whole number of samples of {per} bytes ({spec.describe()})"
            )
        rows = size // per
    elif size != rows * per:
        expected = f"{per} bytes ({spec.describe()})" if rows == 1 else f"{rows} x {per} bytes"
        raise TensorError(f"input has {size} bytes; expected {expected}")
    dtype = DTYPES[spec.dtype]
    raw = np.frombuffer(data, dtype=dtype)
    if dtype.kind in "iu" and dtype.itemsize <= 2 and spec.scale == 1.0 and spec.offset == 0.0:
        # the common case (pixels, samples): exact in float32, nothing can overflow
        return raw.astype(np.float32).reshape((rows, *spec.shape))
    with np.errstate(over="ignore", invalid="ignore"):  # overflow shows up as inf, checked below
        values = raw.astype(np.float32)
        if spec.scale != 1.0:
            values *= np.float32(spec.scale)
        if spec.offset != 0.0:
            values += np.float32(spec.offset)
    if not np.isfinite(values).all():
        raise TensorError("input holds NaN or infinite values")
    return values.reshape((rows, *spec.shape))
