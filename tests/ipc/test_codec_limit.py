"""``max_buffer_size`` on the codecs: input over the limit is refused before decoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchyard.protocols.codec import CodecError, JsonCodec, MsgpackCodec


@pytest.mark.parametrize("codec_type", [JsonCodec, MsgpackCodec])
def test_input_over_the_limit_is_refused_with_both_sizes(codec_type: type) -> None:
    codec = codec_type(max_buffer_size=16)
    small = codec_type().encode("x" * 4)
    assert codec.decode(small) == "xxxx"
    big = codec_type().encode("x" * 100)
    with pytest.raises(CodecError, match=rf"{len(big)} bytes exceeds max_buffer_size 16"):
        codec.decode(big)
    with pytest.raises(CodecError):
        codec.decode(memoryview(big))


@pytest.mark.parametrize("codec_type", [JsonCodec, MsgpackCodec])
@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
def test_bad_limits_are_rejected(codec_type: type, bad: object) -> None:
    with pytest.raises(ValueError, match="max_buffer_size"):
        codec_type(max_buffer_size=bad)


@given(st.binary(max_size=64), st.integers(min_value=0, max_value=64))
def test_limit_decides_before_decoding(data: bytes, limit: int) -> None:
    for codec in (JsonCodec(max_buffer_size=limit), MsgpackCodec(max_buffer_size=limit)):
        try:
            codec.decode(data)
        except CodecError as exc:
            if limit and len(data) > limit:
                assert "exceeds max_buffer_size" in str(exc)
        else:
            assert not limit or len(data) <= limit
