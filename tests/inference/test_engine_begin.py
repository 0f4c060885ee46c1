"""InferenceEngine.begin: a task that needs no waiting is served with no coroutine at all;
everything else continues in a coroutine from what was parsed, with the same replies."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import attrs
import numpy as np
import pytest
import trio
import zmq

from switchyard.apps.models import digits_heldout
from switchyard.services.inference.binary import encode_binary_request, parse_binary_reply
from switchyard.services.inference.engine import EngineConfig, InferenceEngine, Served
from switchyard.services.inference.events import EventPublisher
from switchyard.services.inference.models import digits_model
from switchyard.services.inference.protocol import TaskEvent, TaskRequest, parse_event, parse_reply
from switchyard.testing import free_tcp_endpoint
from switchyard.testing.inference import digit_task
from switchyard.transports.zmq import SocketOptions, open_socket

HELD = digits_heldout()


def body(i: int, **kw: Any) -> list[bytes]:
    return [digit_task(f"t{i}", HELD.pixels[i].tobytes(), params={"meeting_id": "7"}, **kw)]


def without_latency(reply: bytes) -> dict[str, Any]:
    obj = json.loads(reply)
    obj.pop("latency")
    return obj


async def engine_with(**config: Any) -> AsyncIterator[InferenceEngine]:
    # a generous inline bound: a cold first run (allocations, a busy CI host) still counts as tiny
    engine = InferenceEngine(EngineConfig(**{"inline_run_us": 5000.0, **config}))
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        yield engine
        nursery.cancel_scope.cancel()


@pytest.fixture
async def engine() -> AsyncIterator[InferenceEngine]:
    async for e in engine_with():
        yield e


async def finish(outcome: Served | Coroutine[Any, Any, Served]) -> Served:
    return outcome if isinstance(outcome, Served) else await outcome


async def test_a_lockstep_task_is_served_without_a_coroutine_and_matches_the_waiting_path(
    engine: InferenceEngine,
) -> None:
    first = engine.begin(body(0))
    assert not isinstance(first, Served)  # the model's run time is not known yet: a thread run
    waited = await first
    await trio.sleep(0)  # a new scheduler pass, as between a lockstep client's requests
    now = engine.begin(body(0))
    assert isinstance(now, Served)
    assert without_latency(now.reply) == without_latency(waited.reply)
    assert parse_reply(now.reply).result["label"] == str(HELD.labels[0])
    assert now.event is not None and now.event.payload["meeting_id"] == "7"
    assert engine.in_flight == 0


async def test_a_second_task_in_the_same_pass_queues_for_a_batch_with_the_same_answers(
    engine: InferenceEngine,
) -> None:
    await finish(engine.begin(body(1)))
    await trio.sleep(0)
    outcomes = [engine.begin(body(i)) for i in range(2, 6)]  # one pass: a burst
    assert isinstance(outcomes[0], Served)
    assert not any(isinstance(o, Served) for o in outcomes[1:])
    assert engine.in_flight == 0  # a queued task counts once its coroutine runs
    served = [outcomes[0]]
    async with trio.open_nursery() as nursery:
        results: dict[int, Served] = {}

        async def wait(k: int, o: Coroutine[Any, Any, Served]) -> None:
            results[k] = await o

        for k, o in enumerate(outcomes[1:]):
            nursery.start_soon(wait, k, o)
    served += [results[k] for k in range(len(outcomes) - 1)]
    labels = [parse_reply(s.reply).result["label"] for s in served]
    assert labels == [str(HELD.labels[i]) for i in range(2, 6)]
    assert engine.in_flight == 0


async def test_failures_found_while_parsing_or_routing_come_back_at_once(engine: InferenceEngine) -> None:
    bad = engine.begin([b"{not json"])
    assert isinstance(bad, Served) and not bad.ok and bad.event is None
    unknown = engine.begin([digit_task("u", HELD.pixels[0].tobytes(), task_type="no_such_task")])
    assert isinstance(unknown, Served) and not unknown.ok
    assert "unknown task_type" in parse_reply(unknown.reply).error
    assert unknown.event is not None and unknown.event.type == "no_such_task.failed"
    frames = engine.begin([b"a", b"b", b"c"])
    assert isinstance(frames, Served) and "1 frame (JSON) or 2 (binary)" in parse_reply(frames.reply).error


async def test_a_model_path_resolves_in_a_thread_once_then_is_served_at_once(engine: InferenceEngine) -> None:
    await finish(engine.begin(body(0)))  # measures the model's run time
    await trio.sleep(0)
    path = body(3, model_path="/models/digits_mlp.onnx")
    first = engine.begin(path)
    assert not isinstance(first, Served)
    assert parse_reply((await first).reply).ok
    await trio.sleep(0)
    again = engine.begin(path)
    assert isinstance(again, Served) and parse_reply(again.reply).result["label"] == str(HELD.labels[3])


async def test_a_model_not_loaded_yet_loads_in_the_coroutine() -> None:
    async for engine in engine_with(models=[attrs.evolve(digits_model(), preload=False)]):
        assert engine.registry.loaded("digits") is None
        pending = engine.begin(body(4))
        assert not isinstance(pending, Served)
        assert parse_reply((await pending).reply).result["label"] == str(HELD.labels[4])
        assert engine.registry.loaded("digits") is not None


async def test_code_served_task_types_always_take_the_coroutine(engine: InferenceEngine) -> None:
    seen: list[TaskRequest] = []

    async def handler(request: TaskRequest) -> dict[str, Any]:
        seen.append(request)
        await trio.sleep(0)
        return {"echo": request.params["meeting_id"]}

    engine.handlers["echo_task"] = handler
    pending = engine.begin(body(0, task_type="echo_task"))
    assert not isinstance(pending, Served)
    served = await pending
    assert parse_reply(served.reply).result == {"echo": "7"} and seen[0].task_id == "t0"


async def test_binary_tasks_take_the_same_immediate_path(engine: InferenceEngine) -> None:
    rows = HELD.pixels[:3].astype(np.float32)
    frames = [bytes(f) for f in encode_binary_request("b", rows, model="digits")]
    waited = await finish(engine.begin(frames))
    await trio.sleep(0)
    now = engine.begin(frames)
    assert isinstance(now, Served)
    assert parse_binary_reply(now.reply).result == parse_binary_reply(waited.reply).result
    labels = [r["label"] for r in parse_binary_reply(now.reply).result["results"]]
    assert labels == [str(v) for v in HELD.labels[:3]]


async def test_events_are_sent_by_the_publisher_task_after_the_callers_step_in_order() -> None:
    endpoint = free_tcp_endpoint()
    publisher = EventPublisher(endpoint, topic=b"ai_events")
    async with trio.open_nursery() as nursery:
        await nursery.start(publisher.run)
        async with open_socket(zmq.SUB, connect=endpoint, options=SocketOptions(subscribe=[b"ai_events"])) as sub:
            await trio.sleep(0.2)  # the subscription reaches the PUB socket
            publisher.publish(TaskEvent(type="a.completed", payload={"task_id": "1"}))
            publisher.publish_frames([b"ai_events", b'{"type":"b.completed","payload":{}}'])
            publisher.publish(TaskEvent(type="c.completed", payload={"task_id": "3"}))
            assert publisher.stats["published"] == 0  # queued: nothing encoded or sent in the caller's step
            with trio.fail_after(5):
                types = [parse_event(await sub.recv_multipart())[1].type for _ in range(3)]
        assert types == ["a.completed", "b.completed", "c.completed"]
        assert publisher.stats == {"published": 3, "dropped": 0}
        nursery.cancel_scope.cancel()
