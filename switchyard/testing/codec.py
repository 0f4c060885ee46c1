"""Hypothesis strategies for the codec layer (JSON and msgpack bodies)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)


def json_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Any value that survives a JSON round trip unchanged (text keys, finite floats)."""
    return st.recursive(
        _json_scalars,
        lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
        max_leaves=max_leaves,
    )


def msgpack_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Any value that survives a msgpack round trip unchanged (adds bytes, 64-bit ints)."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.floats(allow_nan=False)
        | st.text()
        | st.binary()
    )
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
        max_leaves=max_leaves,
    )
