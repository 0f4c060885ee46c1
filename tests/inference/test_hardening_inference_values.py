"""Inference requests with values outside any type's range: one clear error reply each."""

from __future__ import annotations

import attrs
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchyard import open_system
from switchyard.protocols.codec import msgpack_codec
from switchyard.services.inference.binary import parse_binary_request
from switchyard.services.inference.protocol import TaskError, parse_reply, parse_request
from switchyard.services.inference.service import InferenceActor, InferenceConfig
from switchyard.testing import free_tcp_endpoint
from switchyard.testing.inference import extreme_request_bodies, req_roundtrips


@settings(max_examples=300, deadline=None)
@given(body=extreme_request_bodies())
def test_json_parser_raises_only_task_errors(body):
    try:
        parse_request(body, max_input_bytes=1 << 20)
    except TaskError as exc:
        assert "OverflowError" not in str(exc)


_huge = st.one_of(st.integers(min_value=2**62, max_value=2**64 - 1), st.integers(min_value=-(2**63), max_value=-1))


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(_huge | st.integers(0, 4) | st.floats() | st.text(max_size=3), min_size=0, max_size=6),
    dtype=st.sampled_from(["float32", "int64", "x"]),
)
def test_binary_header_with_huge_shapes_raises_only_task_errors(shape, dtype):
    header = msgpack_codec.encode({"task_id": "t", "model": "m", "dtype": dtype, "shape": shape})
    try:
        parse_binary_request([header, b"\0" * 16], max_input_bytes=1 << 20)
    except TaskError as exc:
        assert "OverflowError" not in str(exc)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(extreme_request_bodies(), min_size=3, max_size=8))
async def test_real_req_client_gets_one_error_reply_per_extreme_request(bodies):
    endpoint = free_tcp_endpoint()
    async with open_system("inference-extreme") as system:
        await system.spawn(
            InferenceActor,
            name="inference",
            config=InferenceConfig(
                endpoint=endpoint,
                events_endpoint="",
                limits=attrs.evolve(InferenceConfig().limits, max_message_size=1 << 20),
            ),
        )
        replies = await trio.to_thread.run_sync(req_roundtrips, endpoint, bodies)
    assert len(replies) == len(bodies)
    for frames in replies:
        assert len(frames) == 1
        reply = parse_reply(frames[0])
        assert reply.status in ("error", "success")
        if reply.status == "error":
            assert "internal error" not in reply.error and "OverflowError" not in reply.error
