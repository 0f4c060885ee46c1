"""Hypothesis strategies for TSR tensors (Tech Renaissance's tensor file format).

``tsr_arrays()`` draws numpy arrays TSR can hold: float32, int8 or int32, 0 to 4
dimensions. ``tsr_blobs()`` draws whole encoded TSR blobs. Compare float arrays
with :func:`same_tensor`, which treats NaNs of equal bit pattern as equal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from switchyard.services.tensor.tsr import DTYPE_CODES, MAX_NDIM, encode

__all__ = ["same_tensor", "tsr_arrays", "tsr_blobs", "tsr_dtypes"]


def tsr_dtypes() -> st.SearchStrategy[np.dtype[Any]]:
    """One of TSR's element types (float32, int8, int32)."""
    return st.sampled_from(list(DTYPE_CODES.values()))


def tsr_arrays(
    *,
    dtype: Any | None = None,
    min_ndim: int = 0,
    max_ndim: int = MAX_NDIM,
    min_side: int = 0,
    max_side: int = 5,
) -> st.SearchStrategy[np.ndarray]:
    """Arrays TSR can store, with every dtype and rank unless narrowed.

    Elements cover the whole value range, NaN and infinities included for float32.
    """
    dtypes = st.just(np.dtype(dtype)) if dtype is not None else tsr_dtypes()
    shapes = hnp.array_shapes(min_dims=min_ndim, max_dims=max_ndim, min_side=min_side, max_side=max_side)
    return dtypes.flatmap(lambda dt: hnp.arrays(dt, shapes))


def tsr_blobs(**kwargs: Any) -> st.SearchStrategy[bytes]:
    """Valid encoded TSR blobs (header + data); ``kwargs`` go to :func:`tsr_arrays`."""
    return tsr_arrays(**kwargs).map(encode)


def same_tensor(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, same shape and the same bytes (so NaN payloads compare equal)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
