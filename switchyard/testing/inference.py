"""Hypothesis strategies and client helpers for the inference task protocol.

* :func:`task_requests` - any valid :class:`~switchyard.services.inference.protocol.TaskRequest`.
* :func:`request_bodies` - request frames in either wire shape (Go base64, byte array).
* :func:`task_replies` - any :class:`~switchyard.services.inference.protocol.TaskReply`.
* :func:`input_specs` / :func:`spec_and_rows` - input encodings and matching bytes.
* :func:`mutated_bodies` - near-valid requests with one field broken (for error paths).
* :func:`extreme_request_bodies` - requests with one field out of any type's range.
* :func:`digit_task` - a ready-made request for the bundled digits model.
* :func:`req_roundtrips` - a blocking real-libzmq REQ client (run it in a thread).
* :func:`bundled_digit_predictions` - what the bundled model says for each held-out row.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

from switchyard.protocols.codec import json_codec
from switchyard.services.inference.protocol import TaskReply, TaskRequest, encode_request
from switchyard.services.inference.tensors import DTYPES, InputSpec
from switchyard.testing.hostile_json import with_extreme_field

__all__ = [
    "bundled_digit_predictions",
    "digit_task",
    "extreme_request_bodies",
    "input_specs",
    "json_results",
    "mutated_bodies",
    "req_roundtrips",
    "request_bodies",
    "spec_and_rows",
    "task_replies",
    "task_requests",
]

_ids = st.text(max_size=40)
_names = st.text(min_size=1, max_size=30)
_params = st.dictionaries(st.text(max_size=16), st.text(max_size=24), max_size=5)


def task_requests(max_input: int = 256) -> st.SearchStrategy[TaskRequest]:
    """Valid requests with arbitrary ids, types, paths, params and input bytes."""
    return st.builds(
        TaskRequest,
        task_id=_ids,
        task_type=_names,
        model_path=st.text(max_size=40),
        input_data=st.binary(max_size=max_input),
        params=_params,
    )


@st.composite
def request_bodies(draw: st.DrawFn, max_input: int = 256) -> tuple[TaskRequest, bytes]:
    """``(request, frame)`` with the frame in the Go (base64) or the byte-array shape."""
    request = draw(task_requests(max_input))
    return request, encode_request(request, byte_array=draw(st.booleans()))


def json_results(max_leaves: int = 8) -> st.SearchStrategy[dict[str, Any]]:
    """Result objects that JSON carries unchanged."""
    scalar = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(1 << 53), 1 << 53),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    value = st.recursive(
        scalar,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=max_leaves,
    )
    return st.dictionaries(st.text(max_size=12), value, max_size=5)


def task_replies() -> st.SearchStrategy[TaskReply]:
    success = st.builds(TaskReply.success, _ids, json_results(), st.integers(0, 1 << 40))
    failure = st.builds(TaskReply.failure, _ids, st.text(max_size=60), st.integers(0, 1 << 40))
    return success | failure


def input_specs(max_elements: int = 64) -> st.SearchStrategy[InputSpec]:
    """Encodings with small shapes over every supported dtype."""
    shapes = st.lists(st.integers(1, 8), min_size=1, max_size=3).filter(lambda dims: math.prod(dims) <= max_elements)
    return st.builds(
        InputSpec,
        dtype=st.sampled_from(sorted(DTYPES)),
        shape=shapes.map(tuple),
        scale=st.floats(-4, 4, allow_nan=False),
        offset=st.floats(-4, 4, allow_nan=False),
    )


@st.composite
def spec_and_rows(draw: st.DrawFn, max_rows: int = 4) -> tuple[InputSpec, int, bytes]:
    """``(spec, rows, data)`` where ``data`` holds exactly ``rows`` finite samples."""
    import numpy as np

    spec = draw(input_specs())
    rows = draw(st.integers(1, max_rows))
    dtype = DTYPES[spec.dtype]
    count = rows * spec.elements
    if dtype.kind == "f":
        values = draw(st.lists(st.floats(-1000, 1000, width=16), min_size=count, max_size=count))
    else:
        info = np.iinfo(dtype)
        values = draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=count, max_size=count))
    return spec, rows, np.asarray(values, dtype=dtype).tobytes()


_BREAKAGES: dict[str, list[Any]] = {
    "task_id": [None, 5, [], {"a": 1}, "x" * 1025],
    "task_type": [None, "", 3, ["digit_recognition"]],
    "model_path": [7, {"p": 1}, True],
    "input_data": ["not base64!", "QUJD=", "é", 5, {"b": 1}, [256], [-1], [1.5], [True], ["a"]],
    "params": [5, "k=v", ["a"], {"k": 1}, {"k": None}, {"k": ["v"]}],
}


@st.composite
def mutated_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """``(field, frame)``: a valid Go-shaped request with ``field`` made invalid."""
    request = draw(task_requests(max_input=32))
    obj = json_codec.decode(encode_request(request))
    field = draw(st.sampled_from(sorted(_BREAKAGES)))
    obj[field] = draw(st.sampled_from(_BREAKAGES[field]))
    return field, json_codec.encode(obj)


def extreme_request_bodies() -> st.SearchStrategy[bytes]:
    """Go-shaped requests with one field holding an out-of-range or wrong-typed value
    (huge integers, 1e400, NaN, deep nesting; see ``switchyard.testing.hostile_json``)."""
    valid = task_requests(max_input=32).map(lambda r: json_codec.decode(encode_request(r)))
    return with_extreme_field(valid)


def digit_task(
    task_id: str,
    pixels: bytes,
    *,
    task_type: str = "digit_recognition",
    model_path: str = "",
    params: dict[str, str] | None = None,
    byte_array: bool = False,
) -> bytes:
    """A request frame for the bundled digits model (64 pixel bytes, values 0..16)."""
    request = TaskRequest(
        task_id=task_id,
        task_type=task_type,
        model_path=model_path,
        input_data=bytes(pixels),
        params=params or {},
    )
    return encode_request(request, byte_array=byte_array)


def req_roundtrips(endpoint: str, requests: list[Any], *, timeout: float = 10.0) -> list[list[bytes]]:
    """Blocking: send each request (bytes, or a list of frames) on one real libzmq REQ
    socket in lockstep and return each reply's frames. Run it in ``trio.to_thread``."""
    import zmq

    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
    try:
        sock.connect(endpoint)
        replies = []
        for request in requests:
            frames = [request] if isinstance(request, bytes | bytearray | memoryview) else list(request)
            sock.send_multipart(frames, copy=False)
            replies.append(sock.recv_multipart())
        return replies
    finally:
        sock.close()


def bundled_digit_predictions() -> list[str]:
    """Labels the bundled digits model gives the held-out split, computed in-process by
    onnxruntime with no service in between: what a service reply must say, row for row."""
    import numpy as np
    import onnxruntime as ort

    from switchyard.apps.models import DIGITS_MODEL, digits_heldout

    session = ort.InferenceSession(str(DIGITS_MODEL), providers=["CPUExecutionProvider"])
    labels, _ = session.run(None, {"input": digits_heldout().pixels.astype(np.float32)})
    return [str(v) for v in labels]
