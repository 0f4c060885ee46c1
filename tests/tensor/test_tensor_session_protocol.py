"""Sans-IO tensor-session protocol: request parsing, response rendering, ZeroMQ frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchyard.services.tensor import protocol as ts
from switchyard.services.tensor.protocol import Done, Request, Response, SessionProtocolError
from switchyard.services.tensor.tsr import TSRError
from switchyard.testing.tsr import same_tensor, tsr_arrays


def test_request_forms():
    assert ts.parse_request(b'{"cmd": "matmul", "params": "a,b"}') == Request("matmul", "a,b")
    assert ts.parse_request(b'{"cmd": "exit"}') == Request("exit", "")
    assert ts.parse_request(b'{"command": "hello", "parameters": "x"}') == Request("hello", "x")
    assert ts.parse_request(b"hello tech renaissance\n") == Request("hello", "tech renaissance")
    assert ts.parse_request("hello 世界".encode()) == Request("hello", "世界")
    for bad in (
        b"",
        b"  ",
        b"\xff\xfe",
        b'{"params": "x"}',
        b'{"cmd": 3}',
        b'{"cmd": "x", "params": [1]}',
        b'{"cmd": "x"',
    ):
        with pytest.raises(SessionProtocolError):
            ts.parse_request(bad)


@given(st.binary(max_size=300))
def test_arbitrary_request_bytes_never_crash(raw):
    try:
        request = ts.parse_request(raw)
    except SessionProtocolError:
        return
    assert isinstance(request.cmd, str) and request.cmd
    assert isinstance(request.params, str)


def test_response_layout_matches_the_original():
    assert ts.render_response("", "r0,r1") == b'{"cmd": "", "params": "r0,r1"}'
    assert ts.render_response("", "Hello 世界") == '{"cmd": "", "params": "Hello 世界"}'.encode()


@given(st.text(), st.text())
def test_responses_are_json_and_scannable_by_the_cpp_client(cmd, text):
    body = ts.render_response(cmd, text).decode("utf-8")
    assert json.loads(body) == {"cmd": cmd, "params": text}
    scanned = ts.extract_params(body)
    # The naive scan stops exactly at the value's closing quote...
    assert body.endswith(scanned + '"}')
    # ...and plain text reaches the C++ side unchanged.
    if not any(c in text for c in '"\\') and all(c >= " " for c in text):
        assert scanned == text


def test_cpp_scan_of_the_original_unescaped_output():
    assert ts.extract_params('{"cmd": "", "params": "Hello World"}') == "Hello World"
    assert ts.extract_params('{"cmd": ""}') == ""


def test_tags():
    assert ts.split_tags("a,b") == ["a", "b"]
    assert ts.split_tags("input_a input_b") == ["input_a", "input_b"]
    assert ts.split_tags(" a , b ,") == ["a", "b"]
    for bad in ("../etc/passwd", "a,/abs", ".hidden", "x\\y"):
        with pytest.raises(SessionProtocolError):
            ts.split_tags(bad)
    assert ts.result_tags(1) == ["r"] and ts.result_tags(3) == ["r0", "r1", "r2"]
    assert ts.error_status("two\nlines  here") == "error:two lines here"


@given(st.integers(0, 2**31), st.text(), st.text(), st.lists(tsr_arrays(max_side=3), max_size=3))
def test_zmq_request_round_trip(req_id, cmd, params, arrays):
    cmd = cmd or "x"
    tensors = [(f"t{i}", a) for i, a in enumerate(arrays)]
    frames = [bytes(f) for f in ts.encode_request(req_id, cmd, params, tensors)]
    got_id, request, got = ts.decode_request(frames)
    assert (got_id, request) == (req_id, Request(cmd, params))
    assert [t for t, _ in got] == [t for t, _ in tensors]
    assert all(same_tensor(a, b) for (_, a), (_, b) in zip(got, tensors, strict=False))


@given(
    st.integers(0, 2**31),
    st.text(),
    st.lists(tsr_arrays(max_side=3), max_size=3),
    st.none() | st.sampled_from(["ok", "error:boom"]),
)
def test_zmq_reply_round_trip(req_id, text, arrays, status):
    tensors = [(f"r{i}", a) for i, a in enumerate(arrays)]
    reply = ts.decode_reply([bytes(f) for f in ts.encode_response(req_id, "", text, tensors, status)])
    assert isinstance(reply, Response) and reply.id == req_id and reply.params == text
    assert reply.status == status
    assert all(same_tensor(a, b) for (_, a), (_, b) in zip(reply.tensors, tensors, strict=False))
    done = ts.decode_reply(ts.encode_done(req_id, "error:boom"))
    assert done == Done(req_id, "error:boom") and not done.ok


@given(st.lists(st.binary(max_size=80), max_size=5))
def test_arbitrary_frames_never_crash_the_decoders(frames):
    for decoder in (ts.decode_request, ts.decode_reply):
        try:
            decoder(frames)
        except (SessionProtocolError, TSRError):
            pass
    ts.request_id_of(frames)


def test_frame_errors_are_specific():
    head = json.dumps({"id": 1, "cmd": "add", "params": "a", "tensors": ["a"]}).encode()
    with pytest.raises(SessionProtocolError, match="frames"):
        ts.decode_request([head])
    with pytest.raises(TSRError) as info:
        ts.decode_request([head, b"x" * 64, b""])
    assert info.value.field == "magic" and "'a'" in str(info.value)
    many = json.dumps({"id": 1, "cmd": "x", "tensors": ["t"] * 100}).encode()
    with pytest.raises(SessionProtocolError, match="limit"):
        ts.decode_request([many])
    assert ts.request_id_of([b'{"id": 9, "cmd": 5}']) == 9
    assert ts.request_id_of([b"junk"]) is None


def test_data_frames_are_zero_copy_views():
    array = np.arange(1000, dtype=np.float32)
    frames = ts.encode_request(1, "x", "", [("a", array)])
    assert np.shares_memory(np.frombuffer(frames[2], np.uint8), array)
    _, _, [(_, back)] = ts.decode_request(frames)
    assert np.shares_memory(back, array)
