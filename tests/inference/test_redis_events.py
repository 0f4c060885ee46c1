"""ai_events of the ZeroMQ inference service on Redis Pub/Sub (events = "redis" | "both")."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
import trio
import zmq

from switchyard import open_system
from switchyard.apps.models import digits_heldout
from switchyard.services.inference.redis_queue import open_redis
from switchyard.services.inference.redis_server import local_redis, redis_server_path
from switchyard.services.inference.service import InferenceActor, InferenceConfig
from switchyard.testing.inference import bundled_digit_predictions

if redis_server_path() is None and os.environ.get("CI") != "true":
    pytest.skip("redis-server is not installed", allow_module_level=True)

HELD = digits_heldout()
EXPECTED = bundled_digit_predictions()


def _ask(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    with zmq.Context.instance().socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        sock.connect(endpoint)
        sock.send(json.dumps(body).encode())
        return json.loads(sock.recv())


def _sub(endpoint: str, n: int) -> list[dict[str, Any]]:
    with zmq.Context.instance().socket(zmq.SUB) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        sock.setsockopt(zmq.SUBSCRIBE, b"ai_events")
        sock.connect(endpoint)
        return [json.loads(sock.recv_multipart()[1]) for _ in range(n)]


async def _redis_events(url: str, n: int, out: list[dict[str, Any]], ready: trio.Event) -> None:
    async with open_redis(url) as client, client.pubsub(channels=["ai_events"]) as ps:
        while len(out) < n:
            message = await ps.get_message(timeout=0.05)
            if message is None:
                continue
            if message["type"] == "subscribe":
                ready.set()
            elif message["type"] == "message":
                out.append(json.loads(message["data"]))


def _task(i: int) -> dict[str, Any]:
    return {
        "task_id": f"z{i}",
        "task_type": "digit_recognition",
        "model_path": "/models/digits_mlp.onnx",
        "input_data": base64.b64encode(HELD.pixels[i].tobytes()).decode(),
        "params": {"meeting_id": "m-9", "user_id": "u-3"},
    }


@pytest.mark.parametrize("mode", ["redis", "both"])
async def test_service_publishes_events_on_redis(mode: str) -> None:
    async with local_redis() as url, open_system("redis-events") as system:
        config = InferenceConfig(
            endpoint="tcp://127.0.0.1:0",
            events_endpoint="tcp://127.0.0.1:0",
            events=mode,
            redis_url=url,  # type: ignore[arg-type]
        )
        ref = await system.spawn(InferenceActor, name="inference", config=config)
        status = await ref.ask("status")
        assert (status["events_endpoint"] is None) == (mode == "redis")
        got: list[dict[str, Any]] = []
        ready = trio.Event()
        zmq_events: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_redis_events, url, 3, got, ready)
            if mode == "both":

                async def sub() -> None:
                    zmq_events.extend(await trio.to_thread.run_sync(_sub, status["events_endpoint"], 3))

                nursery.start_soon(sub)
                await trio.sleep(0.3)  # the SUB socket joins (PUB drops what came before)
            await ready.wait()
            for i in range(3):
                reply = await trio.to_thread.run_sync(_ask, status["endpoint"], _task(i))
                assert reply["status"] == "success"
        for i, event in enumerate(got):
            assert event["type"] == "digit_recognition.completed"
            payload = event["payload"]
            assert payload["task_id"] == f"z{i}" and payload["label"] == EXPECTED[i]
            assert payload["meeting_id"] == "m-9" and payload["user_id"] == "u-3"
            assert isinstance(payload["latency"], int) and payload["timestamp"].endswith("Z")
        if mode == "both":
            assert zmq_events == got


async def test_redis_events_without_redis_do_not_delay_replies() -> None:
    # Nothing listens on this port: replies come at once, events wait (bounded) and are retried.
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = InferenceConfig(
        endpoint="tcp://127.0.0.1:0", events_endpoint="", events="redis", redis_url=f"redis://127.0.0.1:{port}/0"
    )
    async with open_system("redis-events-down") as system:
        ref = await system.spawn(InferenceActor, name="inference", config=config)
        status = await ref.ask("status")
        with trio.fail_after(5):
            reply = await trio.to_thread.run_sync(_ask, status["endpoint"], _task(0))
        assert reply["status"] == "success"
        assert (await ref.ask("status"))["events"]["published"] == 0
