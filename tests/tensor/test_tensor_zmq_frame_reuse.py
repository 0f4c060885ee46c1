"""Result tensors that are a received frame's memory go back as that zmq.Frame: same bytes."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from switchyard.services.tensor.protocol import decode_request, encode_request, encode_response
from switchyard.services.tensor.zmq_session import REUSE_MIN_BYTES, _ReceivedFrames


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://tensor-frame-reuse")
    b.connect("inproc://tensor-frame-reuse")
    yield a, b
    a.close(linger=0)
    b.close(linger=0)


def _bytes(frames: list[object]) -> list[bytes]:
    return [f.bytes if isinstance(f, zmq.Frame) else bytes(f) for f in frames]  # type: ignore[call-overload]


def test_inputs_and_whole_views_of_them_go_back_as_their_frames(pair: tuple[zmq.Socket[bytes], ...]) -> None:
    a, b = pair
    big = np.arange(REUSE_MIN_BYTES // 4 * 4, dtype=np.float32)  # 4x the threshold
    small = np.arange(16, dtype=np.int32)
    a.send_multipart(encode_request(7, "echo", "x,s", [("x", big), ("s", small)]), copy=False)
    frames = b.recv_multipart(copy=False)
    _, _, tensors = decode_request(frames)
    x, s = tensors[0][1], tensors[1][1]
    received = _ReceivedFrames(frames)
    results = [("same", x), ("reshaped", x.reshape(4, -1)), ("new", x + 1), ("small", s), ("half", x[: x.size // 2])]
    plain = encode_response(7, "echo", "", results, "ok")
    reused = received.reuse(encode_response(7, "echo", "", results, "ok"))
    assert _bytes(reused) == _bytes(plain)  # byte for byte what the general path sends
    data = reused[2::2]
    assert data[0] is frames[2] and data[1] is frames[2]  # the received frame itself, twice
    assert all(isinstance(d, memoryview) for d in data[2:])  # a new array, a small one, a part: views as before
    a.send_multipart(reused, copy=False)
    back = b.recv_multipart()
    assert back == _bytes(plain)


def test_no_large_frames_means_nothing_to_reuse() -> None:
    received = _ReceivedFrames([b"{}", b"h" * 64, b"d" * 100])
    out: list[object] = [b"{}", b"h", memoryview(bytearray(REUSE_MIN_BYTES))]
    assert received.reuse(out) is out and isinstance(out[2], memoryview)
