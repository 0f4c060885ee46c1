"""Values outside a type's range get one clear error reply in the peer's own shape."""

from __future__ import annotations

import json

import pytest
import trio
from hypothesis import HealthCheck, given, settings

from switchyard.runtime import open_system
from switchyard.services.aipara.ai_stream import AiStreamActor
from switchyard.services.aipara.protocol import (
    AiBadRequest,
    BadRequest,
    ai_error_reply,
    parse_ai_request,
    parse_rime_request,
)
from switchyard.services.aipara.rime_state import RimeStateActor
from switchyard.testing import free_tcp_endpoint
from switchyard.testing.aipara import AiClient, RimeClient, extreme_ai_bodies, extreme_rime_bodies

CONVERT = b'{"messege_type":"convert","confirmed_pos_input":"nihao","stream_mode":true,"timestamp":%s,"timeout":%s}'


@pytest.mark.parametrize("token", ["1e400", "-1e400", "9" * 400, str(10**400), str(2**64), "NaN", "Infinity"])
@pytest.mark.parametrize("field", ["timestamp", "timeout"])
def test_out_of_range_numbers_are_a_clear_convert_shaped_error(field, token):
    body = CONVERT % ((token.encode(), b"1") if field == "timestamp" else (b"1", token.encode()))
    bad = parse_ai_request(body)
    assert isinstance(bad, AiBadRequest) and bad.messege_type == "convert"
    assert field in bad.reason and "OverflowError" not in bad.reason
    reply = ai_error_reply(bad)
    assert reply["messege_type"] == "convert_result_stream" and reply["is_final"] and reply["is_error"]


@settings(max_examples=300, deadline=None)
@given(body=extreme_ai_bodies())
def test_ai_parser_never_raises_and_keeps_the_kind(body):
    request = parse_ai_request(body, max_bytes=1 << 20)
    if isinstance(request, AiBadRequest):
        assert "internal error" not in request.reason
        if b'"messege_type":"convert"' in body:
            assert request.messege_type == "convert"


@settings(max_examples=300, deadline=None)
@given(body=extreme_rime_bodies())
def test_rime_parser_never_raises(body):
    request = parse_rime_request(body, max_bytes=1 << 20)
    if isinstance(request, BadRequest):
        assert "internal error" not in request.reason


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=extreme_ai_bodies())
async def test_ai_socket_exactly_one_well_shaped_reply(body):
    async with open_system("t", grace_period=1) as system:
        endpoint = free_tcp_endpoint()
        await system.spawn(AiStreamActor, name="ai_stream", config={"endpoint": endpoint, "max_message_size": 1 << 20})
        client = AiClient(endpoint, identity=b"extreme-ai")
        try:
            await trio.to_thread.run_sync(client.send, body)
            replies = await trio.to_thread.run_sync(client.until_final)
            with pytest.raises(TimeoutError):
                await trio.to_thread.run_sync(client.recv, 250)
        finally:
            client.close()
    request = parse_ai_request(body, max_bytes=1 << 20)
    final = replies[-1]
    assert "internal error" not in json.dumps(final)
    if isinstance(request, AiBadRequest):
        assert len(replies) == 1
        if request.messege_type == "convert":
            assert final["messege_type"] == "convert_result_stream" and final["is_error"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=extreme_rime_bodies())
async def test_rime_socket_exactly_one_well_shaped_reply(body):
    async with open_system("t", grace_period=1) as system:
        endpoint = free_tcp_endpoint()
        await system.spawn(
            RimeStateActor, name="rime_state", config={"endpoint": endpoint, "max_message_size": 1 << 20}
        )
        client = RimeClient(endpoint, identity=b"extreme-rime", timeout_ms=2000)
        try:
            # REQ lockstep: a second reply would break the next request's round trip.
            reply = await trio.to_thread.run_sync(client.request, body)
            again = await trio.to_thread.run_sync(client.request, {"messege_type": "command", "command": "x"})
        finally:
            client.close()
    assert reply["messege_type"] == "command_response" and isinstance(reply["command_messege"], list)
    assert "internal error" not in json.dumps(reply)
    assert again["messege_type"] == "command_response"
