"""Hypothesis strategies for JSON values outside what a field's type can hold.

Every JSON protocol is tested with these: integers beyond a float's range and past
Python's digit limit, exponents that parse as infinity, the non-standard ``NaN`` and
``Infinity`` tokens, nesting deep enough to exhaust a recursive parser, and values
of the wrong type. They are produced as raw JSON text (a serialiser would refuse most
of them) and spliced into an otherwise valid request with :func:`with_extreme_field`.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from switchyard.protocols.codec import json_codec

__all__ = ["extreme_json_tokens", "with_extreme_field"]

_PLACEHOLDER = "\x00switchyard-extreme\x00"


def extreme_json_tokens() -> st.SearchStrategy[str]:
    """Raw JSON text of one value no sane field accepts as it stands."""
    huge_int = st.integers(min_value=309, max_value=4000).map(lambda digits: "9" * digits)
    return st.one_of(
        huge_int,
        huge_int.map(lambda s: "-" + s),
        st.just("1" + "0" * 5000),  # past Python's 4300-digit int conversion limit
        st.sampled_from(["1e400", "-1e400", "1e-400", "1.5e308", "9.9e999", "NaN", "Infinity", "-Infinity"]),
        st.integers(min_value=2**63, max_value=2**70).map(str),
        st.integers(min_value=200, max_value=3000).map(lambda n: "[" * n + "]" * n),
        st.integers(min_value=200, max_value=3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
        st.sampled_from(['"x"', "true", "null", "[]", "{}", '[1,"a",{}]', '"' + "\\u0000" * 8 + '"']),
    )


def with_extreme_field(
    valid: st.SearchStrategy[dict[str, Any]], keys: tuple[str, ...] = ()
) -> st.SearchStrategy[bytes]:
    """A request from ``valid`` with one field (one of ``keys``, or any of its own)
    replaced by an :func:`extreme_json_tokens` value; returned as the raw body."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        obj = dict(draw(valid))
        candidates = sorted(k for k in keys if k in obj) or sorted(obj)
        key = draw(st.sampled_from(candidates))
        obj[key] = _PLACEHOLDER
        text = json_codec.encode(obj).decode("utf-8")
        return text.replace(json_codec.encode(_PLACEHOLDER).decode("utf-8"), draw(extreme_json_tokens())).encode()

    return build()
