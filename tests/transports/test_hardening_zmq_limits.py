"""'Exactly one reply' up to the hard message limit, with real clients.

Between a bridge's soft limit (``max_message_size``) and its hard limit (libzmq's
MAXMSGSIZE, ``DEFAULT_HARD_MESSAGE_SIZE`` unless configured) a request gets one error
reply in the peer's format; above the hard limit libzmq drops the connection, and the
server keeps serving everyone else.
"""

from __future__ import annotations

import json

import trio

from switchyard.runtime import open_system
from switchyard.services.aipara.ai_stream import AiStreamActor
from switchyard.services.aipara.rime_state import RimeStateActor
from switchyard.services.inference.protocol import parse_reply
from switchyard.services.inference.service import InferenceActor, InferenceConfig
from switchyard.testing import free_tcp_endpoint
from switchyard.testing.aipara import AiClient, RimeClient
from switchyard.testing.inference import req_roundtrips
from switchyard.transports.zmq_bridges import DEFAULT_HARD_MESSAGE_SIZE, EndpointConfig

STATE = b'{"messege_type":"state","is_composing":true,"timestamp":1,"switches_option":[],"properties":{},"pad":"%s"}'


def state_of(size: int) -> bytes:
    return STATE % (b"x" * (size - len(STATE) + 2))


def test_hard_limit_is_deliberate():
    assert EndpointConfig("tcp://x:1").hard_limit == DEFAULT_HARD_MESSAGE_SIZE == 128 << 20
    assert EndpointConfig("tcp://x:1", max_message_size=64 << 20).hard_limit == 1 << 30
    assert EndpointConfig("tcp://x:1", hard_message_size=5 << 20).hard_limit == 5 << 20
    assert EndpointConfig("tcp://x:1", max_message_size=0).hard_limit == -1


async def test_rime_between_soft_and_hard_limit_gets_one_error_reply_above_it_a_drop():
    async with open_system("t", grace_period=1) as system:
        endpoint = free_tcp_endpoint()
        await system.spawn(RimeStateActor, name="rime_state", config={"endpoint": endpoint})
        soft = 64 * 1024
        client = RimeClient(endpoint, identity=b"big-rime", timeout_ms=20000)
        friend = RimeClient(endpoint, identity=b"friend-rime", timeout_ms=5000)
        try:
            ok = await trio.to_thread.run_sync(client.request, state_of(soft))
            assert ok["response"] == "rime_state_received"
            for size in (soft + 1, 2 << 20, DEFAULT_HARD_MESSAGE_SIZE - 4096):
                reply = await trio.to_thread.run_sync(client.request, state_of(size))
                assert reply["messege_type"] == "command_response" and reply["response"] == "error"
                assert f"request too large: {size} bytes" in json.dumps(reply)
            # Above the hard limit libzmq disconnects the peer: no reply (the REQ times out).
            client.timeout_ms = 3000
            client.sock.close(linger=0)
            client.sock = client._open()
            try:
                await trio.to_thread.run_sync(client.request, state_of(DEFAULT_HARD_MESSAGE_SIZE + 1))
                raise AssertionError("a message above the hard limit got a reply")
            except TimeoutError:
                pass
            friendly = await trio.to_thread.run_sync(friend.request, state_of(100))
            assert friendly["response"] == "rime_state_received"
        finally:
            client.close()
            friend.close()


async def test_ai_oversized_convert_gets_a_convert_shaped_error():
    async with open_system("t", grace_period=1) as system:
        endpoint = free_tcp_endpoint()
        await system.spawn(AiStreamActor, name="ai_stream", config={"endpoint": endpoint})
        client = AiClient(endpoint, identity=b"big-ai", timeout_ms=20000)
        try:
            body = b'{"messege_type":"convert","confirmed_pos_input":"%s"}' % (b"a" * (8 << 20))
            await trio.to_thread.run_sync(client.send, body)
            reply = await trio.to_thread.run_sync(client.recv)
        finally:
            client.close()
    assert reply["messege_type"] == "convert_result_stream" and reply["is_final"] and reply["is_error"]
    assert "exceeds the limit" in reply["error"]


async def test_inference_100_mb_task_gets_one_error_reply():
    endpoint = free_tcp_endpoint()
    async with open_system("t", grace_period=1) as system:
        await system.spawn(
            InferenceActor, name="inference", config=InferenceConfig(endpoint=endpoint, events_endpoint="")
        )
        big = b'{"task_id":"big-1","task_type":"speech_recognition","input_data":"' + b"A" * 100_000_000 + b'"}'
        replies = await trio.to_thread.run_sync(
            lambda: req_roundtrips(endpoint, [big, b'{"task_id":"small","task_type":"nope"}'], timeout=30)
        )
    first, second = (parse_reply(frames[0]) for frames in replies)
    assert first.status == "error" and first.task_id == "big-1" and "exceeds the limit" in first.error
    assert second.status == "error" and second.task_id == "small"
