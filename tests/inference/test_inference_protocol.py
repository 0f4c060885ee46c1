"""The inference task protocol (sans-IO): JSON tasks, binary fast path, tensors, events."""

from __future__ import annotations

import base64
import datetime as dt
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchyard.protocols.codec import json_codec, msgpack_codec
from switchyard.services.inference.binary import (
    encode_binary_reply,
    encode_binary_request,
    parse_binary_reply,
    parse_binary_request,
)
from switchyard.services.inference.protocol import (
    EVENT_TOPIC,
    TaskError,
    TaskReply,
    TaskRequest,
    encode_event,
    encode_reply,
    encode_request,
    error_reply_bytes,
    parse_event,
    parse_reply,
    parse_request,
    task_event,
)
from switchyard.services.inference.tensors import InputSpec, TensorError, decode_rows, parse_shape
from switchyard.testing.inference import (
    json_results,
    mutated_bodies,
    request_bodies,
    spec_and_rows,
    task_replies,
    task_requests,
)

GO_BODY = (
    b'{"task_id":"4f1c2a9e-7d35-4c8b-9a0e-1b2c3d4e5f60","task_type":"digit_recognition",'
    b'"model_path":"/models/digits_mlp.onnx","input_data":"AAECAwQF",'
    b'"params":{"meeting_id":"456","user_id":"789"}}'
)


# --- JSON requests -------------------------------------------------------------------


def test_go_shape_parses() -> None:
    request = parse_request(GO_BODY)
    assert request == TaskRequest(
        task_id="4f1c2a9e-7d35-4c8b-9a0e-1b2c3d4e5f60",
        task_type="digit_recognition",
        model_path="/models/digits_mlp.onnx",
        input_data=bytes(range(6)),
        params={"meeting_id": "456", "user_id": "789"},
    )


def test_byte_array_shape_parses_to_the_same_bytes() -> None:
    body = GO_BODY.replace(b'"AAECAwQF"', b"[0,1,2,3,4,5]")
    assert parse_request(body).input_data == bytes(range(6))


def test_go_nil_slice_and_nil_map_are_empty() -> None:
    request = parse_request(b'{"task_id":"a","task_type":"t","model_path":"","input_data":null,"params":null}')
    assert request.input_data == b"" and request.params == {}


def test_encode_request_matches_go_marshal_byte_for_byte() -> None:
    # encoding/json: struct field order, std base64 with padding, sorted map keys,
    # <, >, & escaped; non-ASCII kept as UTF-8.
    request = TaskRequest(
        task_id="t<1>&",
        task_type="speech_recognition",
        model_path="/models/whisper_base.onnx",
        input_data=b"\xff\x00a",
        params={"z": "会议", "a": "x"},
    )
    expected = (
        '{"task_id":"t\\u003c1\\u003e\\u0026","task_type":"speech_recognition",'
        '"model_path":"/models/whisper_base.onnx","input_data":"/wBh","params":{"a":"x","z":"会议"}}'
    ).encode()
    assert encode_request(request) == expected
    assert parse_request(expected) == request


@given(request_bodies())
def test_request_round_trips_in_both_shapes(case: tuple[TaskRequest, bytes]) -> None:
    request, body = case
    assert parse_request(body) == request


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_arbitrary_bytes_only_raise_task_error(body: bytes) -> None:
    try:
        parse_request(body)
    except TaskError as exc:
        assert str(exc)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=6),
    )
)
def test_arbitrary_json_only_raises_task_error(obj: object) -> None:
    try:
        parse_request(json_codec.encode(obj))
    except TaskError:
        pass


@given(mutated_bodies())
def test_each_broken_field_is_named_in_the_error(case: tuple[str, bytes]) -> None:
    field, body = case
    with pytest.raises(TaskError) as info:
        parse_request(body)
    assert field in str(info.value)
    # the task id is echoed whenever it is itself valid
    obj = json.loads(body)
    if field != "task_id":
        assert info.value.task_id == obj["task_id"]


@pytest.mark.parametrize(
    "value",
    ["QUJD=", "QUJD====", "QUI", "QU JD", "=QUJ", "QUJD\n"],
)
def test_base64_is_as_strict_as_go(value: str) -> None:
    body = json_codec.encode({"task_id": "x", "task_type": "t", "input_data": value})
    with pytest.raises(TaskError, match="base64"):
        parse_request(body)


def test_input_limit_applies_to_both_shapes() -> None:
    for data in (base64.b64encode(bytes(101)).decode(), [0] * 101):
        body = json_codec.encode({"task_id": "big", "task_type": "t", "input_data": data})
        with pytest.raises(TaskError, match="limit of 100 bytes") as info:
            parse_request(body, max_input_bytes=100)
        assert info.value.task_id == "big"
    assert (
        len(
            parse_request(
                json_codec.encode({"task_id": "ok", "task_type": "t", "input_data": [0] * 100}), max_input_bytes=100
            ).input_data
        )
        == 100
    )


# --- replies -------------------------------------------------------------------------


@given(task_replies())
def test_reply_round_trips_and_always_has_five_keys(reply: TaskReply) -> None:
    body = encode_reply(reply)
    assert set(json.loads(body)) == {"task_id", "status", "result", "error", "latency"}
    assert parse_reply(body) == attrs_normalised(reply)


def attrs_normalised(reply: TaskReply) -> TaskReply:
    return TaskReply(
        task_id=reply.task_id, status=reply.status, result=dict(reply.result), error=reply.error, latency=reply.latency
    )


def test_success_reply_is_what_the_go_client_unmarshals() -> None:
    body = encode_reply(TaskReply.success("t1", {"label": "7", "confidence": 0.98}, 3))
    assert body == (
        b'{"task_id":"t1","status":"success","result":{"label":"7","confidence":0.98},"error":"","latency":3}'
    )


def test_unencodable_result_becomes_an_error_reply() -> None:
    reply = parse_reply(encode_reply(TaskReply.success("t", {"x": float("nan")}, 1)))
    assert reply.status == "error" and "encoded" in reply.error and reply.task_id == "t"


def test_error_reply_bytes() -> None:
    assert parse_reply(error_reply_bytes("boom", "id9", 4)) == TaskReply.failure("id9", "boom", 4)


# --- events --------------------------------------------------------------------------


def test_event_payload_has_ids_result_fields_and_latency() -> None:
    when = dt.datetime(2025, 1, 9, 10, 5, tzinfo=dt.UTC)
    reply = TaskReply.success("task_124", {"label": "3", "confidence": 0.88, "task_id": "spoof"}, 7)
    event = task_event("digit_recognition", reply, {"meeting_id": "456", "user_id": "789", "lang": "x"}, now=when)
    assert event.type == "digit_recognition.completed"
    assert event.payload == {
        "task_id": "task_124",
        "task_type": "digit_recognition",
        "status": "success",
        "meeting_id": "456",
        "user_id": "789",
        "label": "3",
        "confidence": 0.88,
        "latency": 7,
        "timestamp": "2025-01-09T10:05:00Z",
    }
    topic, back = parse_event(encode_event(event))
    assert topic == EVENT_TOPIC and back == event


def test_failed_event_carries_the_error() -> None:
    event = task_event("emotion_detection", TaskReply.failure("t", "no such model", 0))
    assert event.type == "emotion_detection.failed" and event.payload["error"] == "no such model"


@given(task_replies(), st.text(min_size=1, max_size=20))
def test_events_always_encode(reply: TaskReply, task_type: str) -> None:
    frames = encode_event(task_event(task_type, reply))
    assert frames[0] == EVENT_TOPIC
    _, event = parse_event(frames)
    assert event.payload["task_id"] == reply.task_id


# --- tensors -------------------------------------------------------------------------


def test_digits_spec_decodes_pixels() -> None:
    spec = InputSpec(dtype="uint8", shape=(64,))
    out = decode_rows(bytes(range(64)), spec, rows=1)
    assert out.dtype == np.float32 and out.shape == (1, 64) and out[0, 63] == 63.0


def test_params_override_and_scale() -> None:
    spec = InputSpec(dtype="uint8", shape=(64,)).with_params({"scale": "0.0627451", "shape": "8,8", "lang": "zh"})
    assert spec.shape == (8, 8)
    out = decode_rows(bytes([255]) * 64, spec, rows=1)
    assert out.shape == (1, 8, 8) and abs(float(out[0, 0, 0]) - 16.0) < 1e-3


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"dtype": "complex64"}, "dtype"),
        ({"shape": "8,x"}, "shape"),
        ({"shape": "0"}, "positive"),
        ({"scale": "abc"}, "scale"),
        ({"offset": "nan"}, "offset"),
        ({"shape": "100000,100000"}, "exceeds"),
    ],
)
def test_bad_overrides_are_named(params: dict[str, str], needle: str) -> None:
    with pytest.raises(TensorError, match=needle):
        InputSpec(dtype="uint8", shape=(64,)).with_params(params)


def test_wrong_size_says_what_was_expected() -> None:
    with pytest.raises(TensorError, match=r"63 bytes; expected 64 bytes \(64 x uint8, shape \[64\]\)"):
        decode_rows(bytes(63), InputSpec(dtype="uint8", shape=(64,)), rows=1)


def test_non_finite_floats_are_refused() -> None:
    with pytest.raises(TensorError, match="NaN"):
        decode_rows(np.array([np.nan], dtype=np.float32).tobytes(), InputSpec(shape=(1,)))
    with pytest.raises(TensorError, match="NaN"):  # float64 overflowing float32
        decode_rows(np.array([1e300], dtype=np.float64).tobytes(), InputSpec(dtype="float64", shape=(1,)))


@given(spec_and_rows())
def test_decode_rows_matches_numpy(case: tuple[InputSpec, int, bytes]) -> None:
    spec, rows, data = case
    from switchyard.services.inference.tensors import DTYPES

    expected = (
        np.frombuffer(data, DTYPES[spec.dtype]).astype(np.float32) * np.float32(spec.scale) + np.float32(spec.offset)
    ).reshape((rows, *spec.shape))
    assert np.array_equal(decode_rows(data, spec, rows=rows), expected)
    assert np.array_equal(decode_rows(data, spec), expected)
    with pytest.raises(TensorError):
        decode_rows(data[:-1], spec, rows=rows)


@given(st.text(max_size=20))
def test_parse_shape_never_raises_anything_else(text: str) -> None:
    try:
        dims = parse_shape(text)
    except TensorError:
        return
    assert all(d > 0 for d in dims)


# --- binary fast path ----------------------------------------------------------------


def test_binary_request_is_zero_copy_and_validated() -> None:
    tensor = np.arange(2 * 64, dtype=np.float32).reshape(2, 64)
    frames = encode_binary_request("b1", tensor, task_type="digit_recognition", params={"k": "v"})
    request = parse_binary_request([bytes(frames[0]), frames[1]], max_input_bytes=1 << 20)
    assert (request.task_id, request.rows, request.sample_shape, request.dtype) == ("b1", 2, (64,), "float32")
    assert request.data.obj is frames[1].obj  # a view of the client's buffer, not a copy
    assert np.array_equal(np.frombuffer(request.data, np.float32).reshape(2, 64), tensor)


@pytest.mark.parametrize(
    "header, data, needle",
    [
        ({"task_id": "x", "dtype": "float32", "shape": [1, 4]}, bytes(16), "task_type or a model"),
        ({"task_id": "x", "model": "m", "dtype": "float33", "shape": [1, 4]}, bytes(16), "dtype"),
        ({"task_id": "x", "model": "m", "dtype": "float32", "shape": [4]}, bytes(16), "shape"),
        ({"task_id": "x", "model": "m", "dtype": "float32", "shape": [1, 4]}, bytes(15), "15 bytes"),
        ({"task_id": "x", "model": "m", "dtype": "float32", "shape": [1, 0]}, b"", "positive"),
        ({"task_id": 3, "model": "m", "dtype": "float32", "shape": [1, 4]}, bytes(16), "task_id"),
        ({"task_id": "x", "model": "m", "dtype": "uint8", "shape": [1, 4], "params": {"a": 1}}, bytes(4), "params"),
        ({"task_id": "x", "model": "m", "dtype": "uint8", "shape": [1000, 1000]}, bytes(4), "limit"),
    ],
)
def test_binary_errors_are_clear(header: dict, data: bytes, needle: str) -> None:
    with pytest.raises(TaskError, match=needle):
        parse_binary_request([msgpack_codec.encode(header), data], max_input_bytes=1 << 16)


@given(st.lists(st.binary(max_size=64), max_size=4))
@settings(max_examples=300)
def test_binary_arbitrary_frames_only_raise_task_error(frames: list[bytes]) -> None:
    try:
        parse_binary_request(frames, max_input_bytes=1 << 16)
    except TaskError:
        pass


@given(task_replies())
def test_binary_reply_round_trips(reply: TaskReply) -> None:
    assert parse_binary_reply(encode_binary_reply(reply)) == attrs_normalised(reply)


@given(task_requests())
def test_task_requests_strategy_encodes(request: TaskRequest) -> None:
    assert parse_request(encode_request(request, byte_array=True)) == request


@given(json_results())
def test_json_results_survive_json(result: dict) -> None:
    assert json.loads(json_codec.encode(result)) == result


# --- broker <-> worker framing -------------------------------------------------------

from switchyard.services.inference.worker_protocol import (  # noqa: E402
    TAG,
    Bye,
    Done,
    Heartbeat,
    Ready,
    Task,
    WorkerProtocolError,
    encode_bye,
    encode_done,
    encode_heartbeat,
    encode_ready,
    encode_task,
    parse_from_broker,
    parse_from_worker,
)

_keys = st.binary(min_size=1, max_size=32)


@given(
    st.builds(
        Ready,
        capacity=st.integers(1, 1 << 20),
        pid=st.integers(0, 1 << 31),
        host=st.text(max_size=20),
        task_types=st.lists(st.text(max_size=10), max_size=3).map(tuple),
        models=st.lists(st.text(max_size=10), max_size=3).map(tuple),
    )
)
def test_ready_round_trips(ready: Ready) -> None:
    assert parse_from_worker(encode_ready(ready)) == ready


@given(_keys, st.binary(max_size=50), st.binary(max_size=50), st.lists(st.binary(max_size=20), min_size=1, max_size=3))
def test_done_and_task_round_trip(key: bytes, reply: bytes, event: bytes, request: list[bytes]) -> None:
    done = parse_from_worker(encode_done(key, reply, event))
    assert isinstance(done, Done) and (done.key, done.reply, done.event) == (key, reply, event)
    task = parse_from_broker(encode_task(key, request))
    assert isinstance(task, Task) and task.key == key and task.request == request
    assert parse_from_worker(encode_heartbeat()) == Heartbeat() == parse_from_broker(encode_heartbeat())
    assert parse_from_worker(encode_bye()) == Bye()


@given(st.lists(st.one_of(st.binary(max_size=40), st.sampled_from([TAG, b"R", b"D", b"T", b"H", b"B"])), max_size=6))
@settings(max_examples=400)
def test_worker_framing_rejects_garbage_cleanly(frames: list[bytes]) -> None:
    for parse in (parse_from_worker, parse_from_broker):
        try:
            parse(frames)
        except WorkerProtocolError:
            pass


def test_ready_validation() -> None:
    for body in ({"capacity": 0}, {"capacity": True}, {"capacity": 2, "models": [1]}, [1]):
        with pytest.raises(WorkerProtocolError):
            parse_from_worker([TAG, b"R", msgpack_codec.encode(body)])
    with pytest.raises(WorkerProtocolError, match="task key"):
        parse_from_broker([TAG, b"T", b"x" * 33, b"{}"])
