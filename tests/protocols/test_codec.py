"""The codec layer: round trips, non-ASCII kept, arbitrary bytes never crash."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchyard.protocols.codec import CodecError, get_codec, json_codec, msgpack_codec
from switchyard.testing.codec import json_values, msgpack_values


@given(json_values())
def test_json_round_trip(value: object) -> None:
    assert json_codec.decode(json_codec.encode(value)) == value


@given(msgpack_values())
def test_msgpack_round_trip(value: object) -> None:
    assert msgpack_codec.decode(msgpack_codec.encode(value)) == value


@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_ever_raise_codec_error(data: bytes) -> None:
    for codec in (json_codec, msgpack_codec):
        try:
            codec.decode(data)
        except CodecError:
            pass


def test_json_keeps_non_ascii_and_is_compact() -> None:
    assert json_codec.encode({"text": "你好世界"}) == '{"text":"你好世界"}'.encode()


def test_json_refuses_nan_and_unencodable() -> None:
    with pytest.raises(CodecError):
        json_codec.encode(math.nan)
    with pytest.raises(CodecError):
        json_codec.encode({"x": object()})


def test_deep_nesting_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        json_codec.decode(b"[" * 100_000)


def test_huge_integer_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="invalid JSON"):
        json_codec.decode(b"1" * 5000)


def test_get_codec() -> None:
    assert get_codec("json") is json_codec and get_codec("msgpack") is msgpack_codec
    with pytest.raises(CodecError, match="unknown codec"):
        get_codec("xml")


_stdlib = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

#: Values where orjson and the stdlib differ in what they accept or how they write it.
_awkward = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.floats(),  # NaN and infinities included
        st.integers(min_value=-(2**80), max_value=2**80),  # beyond 64 bits too
        st.text(),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(), st.integers(), st.booleans()), inner, max_size=4),
    ),
    max_leaves=12,
)


@given(_awkward)
def test_json_encode_accepts_refuses_and_means_what_the_stdlib_does(value: object) -> None:
    try:
        expected = _stdlib.encode(value).encode("utf-8")
    except (TypeError, ValueError):
        with pytest.raises(CodecError):
            json_codec.encode(value)
        return
    got = json_codec.encode(value)
    assert json.loads(got) == json.loads(expected)


def test_json_encode_falls_back_for_subclasses_and_refuses_what_the_stdlib_refuses() -> None:
    import dataclasses
    import datetime

    class Name(str):
        pass

    assert json_codec.encode({Name("k"): Name("v")}) == b'{"k":"v"}'

    @dataclasses.dataclass
    class Point:
        x: int

    for refused in (Point(1), datetime.datetime(2025, 1, 1), {1.5: math.nan}):
        with pytest.raises(CodecError):
            json_codec.encode(refused)
    assert json_codec.encode({"n": None, "big": 2**70}) == b'{"n":null,"big":1180591620717411303424}'
