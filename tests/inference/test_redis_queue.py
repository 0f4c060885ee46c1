"""The Redis queue path against a real redis-server: priorities, poison, retries, the
reaper, exactly-once events, and worker processes SIGKILLed mid-run."""

from __future__ import annotations

import base64
import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from switchyard import open_system
from switchyard.apps.models import digits_heldout
from switchyard.services.inference.redis_queue import QUEUES, QueueWorker, open_redis
from switchyard.services.inference.redis_server import EventsRecorder, RedisUnavailable, local_redis, redis_server_path
from switchyard.services.inference.redis_tasks import PoisonTask, parse_task, snake, with_retry
from switchyard.services.inference.redis_worker import RedisQueueActor, RedisQueueConfig, serve_queue
from switchyard.testing.inference import bundled_digit_predictions

HELD = digits_heldout()
EXPECTED = bundled_digit_predictions()

if redis_server_path() is None and os.environ.get("CI") != "true":
    pytest.skip("redis-server is not installed", allow_module_level=True)


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    try:
        async with local_redis() as url:
            yield url
    except RedisUnavailable as exc:  # pragma: no cover - only on a broken host
        pytest.fail(str(exc))


def digit_task(i: int, priority: str, *, capital: bool = False) -> bytes:
    pixels = base64.b64encode(HELD.pixels[i % len(HELD.pixels)].tobytes()).decode()
    if capital:  # a Go struct without json tags
        doc: dict[str, Any] = {
            "ID": f"t{i}",
            "Type": "ai.digit_recognition",
            "Priority": priority,
            "Payload": {"TaskID": f"t{i}", "InputData": pixels, "MeetingID": 1000 + i, "UserID": f"u{i}"},
            "RetryCount": 0,
            "CreatedAt": "2025-01-09T10:05:00Z",
        }
    else:
        doc = {
            "id": f"t{i}",
            "type": "ai.digit_recognition",
            "priority": priority,
            "payload": {"task_id": f"t{i}", "input_data": pixels, "meeting_id": 1000 + i, "user_id": f"u{i}"},
            "retry_count": 0,
            "created_at": "2025-01-09T10:05:00Z",
        }
    return json.dumps(doc).encode()


def vad_task(task_id: str, audio: bytes, rate: str = "16000") -> bytes:
    payload = {"task_id": task_id, "audio_data": base64.b64encode(audio).decode(), "meeting_id": 7, "user_id": 9}
    payload["params"] = {"format": "pcm", "sample_rate": rate}  # type: ignore[assignment]
    return json.dumps(
        {"id": task_id, "type": "ai.voice_activity_detection", "priority": "normal", "payload": payload}
    ).encode()


@asynccontextmanager
async def subscribed(url: str) -> AsyncIterator[EventsRecorder]:
    events = EventsRecorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(events.run, url)
        try:
            yield events
        finally:
            events.stop()


async def push(url: str, queue: str, *raws: bytes) -> None:
    async with open_redis(url) as client:
        for raw in raws:
            await client.lpush(queue, [raw])


async def lengths(url: str) -> dict[str, int]:
    async with open_redis(url) as client:
        keys = [*QUEUES, "processing_queue", "dead_letter_queue"]
        out = {k: int(await client.llen(k)) for k in keys}
        out["processing_started"] = int(await client.hlen("processing_started"))
        return out


async def dead_letters(url: str) -> list[dict[str, Any]]:
    async with open_redis(url) as client:
        return [json.loads(x) for x in await client.lrange("dead_letter_queue", 0, -1)]


# -- parsing (no Redis) -------------------------------------------------------------------


def test_snake_case_keys() -> None:
    assert [snake(k) for k in ("TaskID", "MeetingID", "task_id", "Payload", "RetryCount", "userId")] == [
        "task_id", "meeting_id", "task_id", "payload", "retry_count", "user_id",
    ]  # fmt: skip


def test_parse_both_spellings_and_retry() -> None:
    a, b = parse_task(digit_task(3, "high")), parse_task(digit_task(3, "high", capital=True))
    for task in (a, b):
        assert (task.id, task.task_type, task.input_data) == ("t3", "digit_recognition", HELD.pixels[3].tobytes())
        assert task.ids == {"meeting_id": 1003, "user_id": "u3"}
    again = json.loads(with_retry(b))
    assert again["RetryCount"] == 1 and "retry_count" not in again
    assert parse_task(with_retry(parse_task(with_retry(a)))).retry_count == 2


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_parse_never_raises_but_poison(raw: bytes) -> None:
    try:
        parse_task(raw)
    except PoisonTask as exc:
        assert str(exc)


@given(
    st.dictionaries(
        st.sampled_from(["type", "Type", "payload", "Payload", "retry_count", "id", "x"]),
        st.none() | st.integers() | st.text(max_size=8) | st.lists(st.integers(-3, 300), max_size=4)
        | st.dictionaries(st.sampled_from(["input_data", "task_id", "AudioData", "meeting_id"]),
                          st.none() | st.integers() | st.text(max_size=8) | st.lists(st.integers(-3, 300), max_size=4)),
    )
)  # fmt: skip
def test_parse_hostile_objects(doc: dict[str, Any]) -> None:
    try:
        task = parse_task(json.dumps(doc).encode())
    except PoisonTask:
        return
    assert task.task_type and isinstance(task.input_data, bytes)


# -- one in-process worker ----------------------------------------------------------------


def config(url: str, **kw: Any) -> RedisQueueConfig:
    return RedisQueueConfig(redis_url=url, workers=0, threads=1, **kw)


async def test_priorities_served_high_first_with_capitalised_keys(redis_url: str) -> None:
    async with subscribed(redis_url) as events, trio.open_nursery() as nursery:
        order: list[str] = []
        i = 0
        for queue in ("low_queue", "normal_queue", "high_queue", "critical_queue"):  # low pushed first
            for _ in range(6):
                await push(redis_url, queue, digit_task(i, queue[:-6], capital=i % 2 == 1))
                i += 1
        for queue in ("critical_queue", "high_queue", "normal_queue", "low_queue"):
            base = {"low_queue": 0, "normal_queue": 6, "high_queue": 12, "critical_queue": 18}[queue]
            order += [f"t{base + k}" for k in range(6)]
        worker = await nursery.start(serve_queue, config(redis_url))
        got = await events.wait_for(24, 30)
        assert [e["payload"]["task_id"] for e in got] == order
        for event in got:
            n = int(event["payload"]["task_id"][1:])
            assert event["type"] == "digit_recognition.completed"
            assert event["payload"]["label"] == EXPECTED[n]
            assert event["payload"]["meeting_id"] == 1000 + n  # numbers stay numbers
            assert event["payload"]["user_id"] == f"u{n}"
            assert isinstance(event["payload"]["latency"], int) and event["payload"]["timestamp"].endswith("Z")
        assert worker.stats["completed"] == 24
        nursery.cancel_scope.cancel()
    assert await lengths(redis_url) == dict.fromkeys(
        [*QUEUES, "processing_queue", "dead_letter_queue", "processing_started"], 0
    )


async def test_poison_tasks_are_dead_lettered_and_the_worker_goes_on(redis_url: str) -> None:
    poison = [
        b"not json",
        b"[1, 2, 3]",
        b'{"payload": {"task_id": "p-notype"}}',
        json.dumps({"id": "p-unknown", "type": "ai.teleportation", "payload": {"task_id": "p-unknown"}}).encode(),
        json.dumps({"id": "p-b64", "Type": "ai.digit_recognition", "Payload": {"InputData": "%%%"}}).encode(),
        b"\xff\xfe\x00garbage",
    ]
    async with subscribed(redis_url) as events, trio.open_nursery() as nursery:
        await push(redis_url, "normal_queue", digit_task(0, "normal"), *poison, digit_task(1, "normal"))
        worker = await nursery.start(serve_queue, config(redis_url))
        got = await events.wait_for(4, 30)  # 2 completed + 2 failed (those with an id and a type)
        await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    types = sorted(e["type"] for e in got)
    assert types == [
        "digit_recognition.completed",
        "digit_recognition.completed",
        "digit_recognition.failed",
        "teleportation.failed",
    ]
    dead = await dead_letters(redis_url)
    assert len(dead) == len(poison) and worker.stats["dead"] == len(poison)
    errors = " | ".join(d["error"] for d in dead)
    for text in ("not JSON", "JSON object", "no type", "unknown task type 'teleportation'", "base64"):
        assert text in errors
    assert {d["queue"] for d in dead} == {"normal_queue"}
    assert any(d["task"] == "not json" for d in dead)
    assert (await lengths(redis_url))["processing_queue"] == 0


async def test_failing_task_is_retried_three_times_then_dead_lettered_once(redis_url: str) -> None:
    bad = vad_task("v-bad", b"\x00\x01" * 800, rate="forty-eight thousand")
    async with subscribed(redis_url) as events, trio.open_nursery() as nursery:
        await push(redis_url, "high_queue", bad)
        worker = await nursery.start(serve_queue, config(redis_url))
        got = await events.wait_for(1, 30)
        await trio.sleep(0.5)  # a second event would arrive now
        nursery.cancel_scope.cancel()
    assert len(got) == 1 and got[0]["type"] == "voice_activity_detection.failed"
    assert "sample_rate" in got[0]["payload"]["error"] and got[0]["payload"]["meeting_id"] == 7
    assert worker.stats["retried"] == 3
    (dead,) = await dead_letters(redis_url)
    assert dead["retry_count"] == 3 and dead["task"]["retry_count"] == 3 and "sample_rate" in dead["error"]
    assert (await lengths(redis_url))["processing_queue"] == 0


async def test_reaped_task_is_redone_and_published_once(redis_url: str) -> None:
    async with subscribed(redis_url) as events, trio.open_nursery() as nursery:
        await push(redis_url, "normal_queue", digit_task(5, "normal"))
        async with open_redis(redis_url) as client:
            ghost = QueueWorker(client, lambda t: None, lambda: [], config(redis_url).queue_config())  # type: ignore[arg-type,return-value]
            taken = await ghost.take()  # a worker that then dies
        assert taken is not None and taken[1] == "normal_queue"
        assert (await lengths(redis_url))["processing_queue"] == 1
        worker = await nursery.start(serve_queue, config(redis_url, visibility_timeout=0.5, reap_interval=0.1))
        got = await events.wait_for(1, 30)
        # The "dead" worker was only slow: it finishes the same entry now. No second event.
        await worker.process(*taken)
        await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    assert len(got) == 1 and got[0]["payload"]["label"] == EXPECTED[5]
    assert worker.stats["reaped"] == 1 and worker.stats["duplicates"] == 1
    assert (await lengths(redis_url))["processing_queue"] == 0


# -- worker processes, SIGKILLed mid-run ---------------------------------------------------


def _noise(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 3000, int(16000 * seconds)).clip(-32768, 32767).astype("<i2")).tobytes()


@pytest.mark.slow
async def test_worker_killed_mid_run_every_task_completed_exactly_once(redis_url: str) -> None:
    n = 40
    audio = _noise(20.0, 1)  # ~60 ms of model time per task: a kill lands mid-task
    cfg = RedisQueueConfig(redis_url=redis_url, workers=2, threads=1, visibility_timeout=30.0, restart_delay=0.2)
    async with subscribed(redis_url) as events, trio.open_nursery() as nursery:
        for k in range(n):
            await push(redis_url, ("high_queue", "low_queue")[k % 2], vad_task(f"k{k}", audio))
        async with open_system("redis-kill-test") as system:
            ref = await system.spawn(RedisQueueActor, name="inference_redis", config=cfg)
            await events.wait_for(6, 60)
            with trio.fail_after(10):
                while (await lengths(redis_url))["processing_started"] < 2:  # both workers mid-task
                    await trio.sleep(0.005)
            status = await ref.ask("status")
            victim = status["pids"][0]
            os.kill(victim, signal.SIGKILL)
            # The actor saw its worker die and returned its task at once, not after 30 s.
            got = await events.wait_for(n, 25)
            await trio.sleep(1.0)  # a duplicate would show up by now
            status = await ref.ask("status")
            assert status["restarts"] >= 1 and victim not in status["pids"].values()
        nursery.cancel_scope.cancel()
    ids = [e["payload"]["task_id"] for e in events.items]
    assert len(ids) == n and set(ids) == {f"k{k}" for k in range(n)}
    assert all(e["type"] == "voice_activity_detection.completed" for e in got)
    left = await lengths(redis_url)
    assert left["processing_queue"] == 0 and left["processing_started"] == 0 and left["dead_letter_queue"] == 0
    high = [i for i, t in enumerate(ids) if int(t[1:]) % 2 == 0]
    low = [i for i, t in enumerate(ids) if int(t[1:]) % 2 == 1]
    assert sum(high) < sum(low)  # high tasks were served first (a reaped low one may come early)


async def test_input_over_max_input_bytes_is_dead_lettered(redis_url: str) -> None:
    huge = json.dumps({"id": "h1", "type": "ai.digit_recognition", "payload": {"input_data": "A" * 4000}}).encode()
    async with subscribed(redis_url) as events, trio.open_nursery() as nursery:
        await push(redis_url, "low_queue", huge, digit_task(2, "low"))
        await nursery.start(serve_queue, config(redis_url, max_input_bytes=100))
        got = await events.wait_for(2, 30)
        nursery.cancel_scope.cancel()
    assert sorted(e["type"] for e in got) == ["digit_recognition.completed", "digit_recognition.failed"]
    (dead,) = await dead_letters(redis_url)
    assert "max_input_bytes" in dead["error"] and dead["task"]["id"] == "h1"


async def test_a_stopped_worker_hands_its_tasks_back(redis_url: str) -> None:
    async def hang(task: Any) -> Any:
        await trio.sleep_forever()

    await push(redis_url, "high_queue", digit_task(1, "high"))
    async with open_redis(redis_url) as client, trio.open_nursery() as nursery:
        worker = QueueWorker(client, hang, lambda: ["digit_recognition"], config(redis_url).queue_config())
        await nursery.start(worker.run)
        with trio.fail_after(10):
            while (await lengths(redis_url))["processing_queue"] == 0:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    left = await lengths(redis_url)
    assert left["processing_queue"] == 0 and left["processing_started"] == 0 and left["high_queue"] == 1
