"""Scale-out: broker + worker processes, workers dying mid-task, heartbeats, events."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import pytest
import trio
import zmq

from switchyard import open_system
from switchyard.apps.models import digits_heldout
from switchyard.services.inference.broker import InferenceBrokerActor, InferenceBrokerConfig
from switchyard.services.inference.protocol import TaskReply, parse_event, parse_reply
from switchyard.services.inference.worker import InferenceWorkerActor, InferenceWorkerConfig
from switchyard.services.inference.worker_protocol import (
    TAG,
    Done,
    Ready,
    encode_heartbeat,
    encode_task,
    parse_from_worker,
)
from switchyard.testing import free_tcp_endpoint
from switchyard.testing.inference import bundled_digit_predictions, digit_task, req_roundtrips

HELD = digits_heldout()
EXPECTED = bundled_digit_predictions()
FAST = dict(heartbeat_interval=0.2, heartbeat_liveness=3, restart_delay=0.2)
SLOW_WORKER = InferenceWorkerConfig(max_delay_ms=1500.0)  # holds each task ~1.5 s: "mid-task" is long


def pixels(i: int) -> bytes:
    return HELD.pixels[i].tobytes()


@asynccontextmanager
async def broker(**config: Any) -> AsyncIterator[tuple[Any, str]]:
    endpoint = free_tcp_endpoint()
    cfg = InferenceBrokerConfig(
        endpoint=endpoint, worker_endpoint=free_tcp_endpoint(), events_endpoint=free_tcp_endpoint(), **config
    )
    async with open_system("scaleout-test") as system:
        ref = await system.spawn(InferenceBrokerActor, name="broker", config=cfg)
        yield ref, endpoint


async def wait_for(ref: Any, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while True:
            status = await ref.ask("status")
            if predicate(status):
                return status
            await trio.sleep(0.05)


def busy_worker(status: dict[str, Any]) -> dict[str, Any] | None:
    return next((w for w in status["workers"] if w["in_flight"] > 0), None)


async def send_in_background(nursery: trio.Nursery, endpoint: str, body: bytes, box: list[TaskReply]) -> None:
    async def run() -> None:
        [[frame]] = await trio.to_thread.run_sync(partial(req_roundtrips, endpoint, [body], timeout=30))
        box.append(parse_reply(frame))

    nursery.start_soon(run)


async def test_two_local_workers_share_the_load_and_events_flow() -> None:
    async with broker(workers=2, **FAST) as (ref, endpoint):
        status = await wait_for(ref, lambda s: len(s["workers"]) == 2)

        def run() -> tuple[list[TaskReply], list[Any]]:
            ctx = zmq.Context.instance()
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"ai_events")
            sub.setsockopt(zmq.RCVTIMEO, 5000)
            sub.connect(status["events_endpoint"])
            dealers = []
            try:
                # warm the subscription (a SUB only sees events after it joined)
                for _attempt in range(50):
                    req_roundtrips(endpoint, [digit_task("warm", pixels(0))])
                    sub.setsockopt(zmq.RCVTIMEO, 200)
                    try:
                        sub.recv_multipart()
                        break
                    except zmq.Again:
                        continue
                while True:
                    try:
                        sub.recv_multipart()
                    except zmq.Again:
                        break
                sub.setsockopt(zmq.RCVTIMEO, 5000)
                for _ in range(120):
                    d = ctx.socket(zmq.DEALER)
                    d.setsockopt(zmq.LINGER, 0)
                    d.setsockopt(zmq.RCVTIMEO, 10_000)
                    d.connect(endpoint)
                    dealers.append(d)
                for i, d in enumerate(dealers):
                    d.send_multipart([b"", digit_task(f"s{i}", pixels(i), params={"meeting_id": "m1"})])
                replies = [parse_reply(d.recv_multipart()[1]) for d in dealers]
                events = [parse_event(sub.recv_multipart())[1] for _ in dealers]
                return replies, events
            finally:
                sub.close()
                for d in dealers:
                    d.close()

        replies, events = await trio.to_thread.run_sync(run)
        assert [r.task_id for r in replies] == [f"s{i}" for i in range(120)]
        accuracy = sum(r.ok and r.result["label"] == str(HELD.labels[i]) for i, r in enumerate(replies)) / 120
        assert accuracy >= 0.95
        assert sorted(e.payload["task_id"] for e in events) == sorted(f"s{i}" for i in range(120))
        assert all(e.type == "digit_recognition.completed" and e.payload["meeting_id"] == "m1" for e in events)
        served = [w["served"] for w in (await ref.ask("status"))["workers"]]
        assert len(served) == 2 and all(n > 0 for n in served), served


async def test_local_worker_killed_mid_task_is_retried_then_fails_after_second_loss() -> None:
    async with broker(workers=1, worker=SLOW_WORKER, **FAST) as (ref, endpoint):
        await wait_for(ref, lambda s: len(s["workers"]) == 1)
        async with trio.open_nursery() as nursery:
            # 1: killed once mid-task -> retried on the restarted worker -> success
            first: list[TaskReply] = []
            await send_in_background(nursery, endpoint, digit_task("kill-once", pixels(7)), first)
            victim = busy_worker(await wait_for(ref, busy_worker))
            os.kill(victim["pid"], signal.SIGKILL)
            with trio.fail_after(15):
                while not first:
                    await trio.sleep(0.05)
            assert first[0].ok and first[0].task_id == "kill-once"
            assert first[0].result["label"] == EXPECTED[7]
            stats = (await ref.ask("status"))["stats"]
            assert stats["retried"] == 1 and stats["lost_twice"] == 0

            # 2: killed on both attempts -> an error reply, not silence
            second: list[TaskReply] = []
            await send_in_background(nursery, endpoint, digit_task("kill-twice", pixels(8)), second)
            for _ in range(2):
                victim = busy_worker(
                    await wait_for(
                        ref, lambda s, victim=victim: (w := busy_worker(s)) is not None and w["pid"] != victim["pid"]
                    )
                )
                os.kill(victim["pid"], signal.SIGKILL)
            with trio.fail_after(15):
                while not second:
                    await trio.sleep(0.05)
        reply = second[0]
        assert reply.status == "error" and reply.task_id == "kill-twice"
        assert "already been retried once" in reply.error
        stats = (await ref.ask("status"))["stats"]
        assert stats["retried"] == 2 and stats["lost_twice"] == 1


async def test_remote_worker_dying_is_noticed_by_heartbeat_and_task_moves() -> None:
    async with broker(workers=0, **FAST) as (ref, endpoint):
        worker_ep = (await ref.ask("status"))["worker_endpoint"]

        def worker_config(identity: str, slow: bool) -> bytes:
            cfg = InferenceWorkerConfig(
                broker_endpoint=worker_ep,
                identity=identity,
                heartbeat_interval=0.2,
                max_delay_ms=3000.0 if slow else 0.0,
            )
            return json.dumps(attrs.asdict(cfg)).encode()

        command = [sys.executable, "-m", "switchyard.services.inference.worker", "--config", "-"]
        async with trio.open_nursery() as nursery:
            start = partial(trio.run_process, command, check=False)
            slow = await nursery.start(partial(start, stdin=worker_config("slow", True)))
            await wait_for(ref, lambda s: len(s["workers"]) == 1)
            box: list[TaskReply] = []
            await send_in_background(nursery, endpoint, digit_task("moved", pixels(9)), box)
            await wait_for(ref, busy_worker)
            fast = await nursery.start(partial(start, stdin=worker_config("fast", False)))
            await wait_for(ref, lambda s: len(s["workers"]) == 2)
            slow.kill()  # SIGKILL: no BYE, no more heartbeats
            with trio.fail_after(10):
                while not box:
                    await trio.sleep(0.05)
            assert box[0].ok and box[0].result["label"] == EXPECTED[9]
            status = await ref.ask("status")
            assert status["stats"]["retried"] == 1 and status["stats"]["workers_lost"] == 1
            assert [w["identity"].split("-")[0] for w in status["workers"]] == ["fast"]
            fast.send_signal(signal.SIGTERM)  # graceful: BYE, then exit 0
            assert await fast.wait() == 0
            await wait_for(ref, lambda s: not s["workers"])


async def test_no_worker_means_an_error_reply_not_silence() -> None:
    async with broker(workers=0, queue_timeout=0.4, **FAST) as (_ref, endpoint):
        [[frame]] = await trio.to_thread.run_sync(req_roundtrips, endpoint, [digit_task("alone", pixels(0))])
        reply = parse_reply(frame)
        assert reply.status == "error" and reply.task_id == "alone"
        assert "no inference worker is connected within 0.4 s" in reply.error


async def test_worker_against_a_raw_router_reconnects_when_the_broker_is_silent() -> None:
    endpoint = free_tcp_endpoint()
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVTIMEO, 5000)
    router.bind(endpoint)
    try:
        async with open_system("worker-test") as system:
            config = InferenceWorkerConfig(
                broker_endpoint=endpoint, identity="w", heartbeat_interval=0.1, heartbeat_liveness=3, capacity=8
            )
            await system.spawn(InferenceWorkerActor, name="worker", config=config)

            def converse() -> tuple[Ready, Done, Any, bytes, bytes]:
                first_id, *frames = router.recv_multipart()
                ready = parse_from_worker(frames)
                router.send_multipart([first_id, TAG, b"?"])  # garbage: ignored
                router.send_multipart([first_id, *encode_task(b"k1", [digit_task("via-raw", pixels(3))])])
                while True:  # keep it alive while it answers
                    ident, *frames = router.recv_multipart()
                    message = parse_from_worker(frames)
                    if isinstance(message, Done):
                        break
                    router.send_multipart([first_id, *encode_heartbeat()])
                done_reply, done_event = bytes(message.reply), bytes(message.event)
                # now stay silent: the worker must reconnect under a new identity and re-announce
                while True:
                    ident, *frames = router.recv_multipart()
                    if ident != first_id and isinstance(parse_from_worker(frames), Ready):
                        return ready, message, done_event, done_reply, ident

            ready, done, event_body, reply_body, second_id = await trio.to_thread.run_sync(converse)
            assert ready.capacity == 8 and ready.task_types == ("digit_recognition",)
            assert done.key == b"k1"
            reply = parse_reply(reply_body)
            assert reply.ok and reply.task_id == "via-raw" and reply.result["label"] == EXPECTED[3]
            _, event = parse_event([b"ai_events", event_body])
            assert event.type == "digit_recognition.completed" and event.payload["task_id"] == "via-raw"
            assert second_id.startswith(b"w-2-")
            status = await system.lookup("worker").ask("status")
            assert status["connections"] >= 2 and status["served"] == 1
    finally:
        router.close()


def test_manifests_validate() -> None:
    from switchyard.runtime.manifest import default_manifest_path, load_manifest

    apps = default_manifest_path().parent
    kinds = {}
    for name in ("inference.toml", "inference_scaleout.toml", "inference_worker.toml", "default.toml"):
        for actor in load_manifest(apps / name).actors:
            kinds[actor.kind] = actor.config
    assert kinds["inference"].endpoint == "tcp://127.0.0.1:5555"
    broker_config = kinds["inference_broker"]
    assert broker_config.workers == 2 and broker_config.worker.models[0].name == "digits"
    assert kinds["inference_worker"].broker_endpoint == broker_config.worker_endpoint


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="finds the worker process through Linux /proc")
async def test_cli_broker_serves_and_its_workers_do_not_outlive_it(tmp_path: Any) -> None:
    """`switchyard run` a scale-out manifest; SIGKILL the broker: its workers stop by themselves."""
    endpoint, workers_ep, events_ep = free_tcp_endpoint(), free_tcp_endpoint(), free_tcp_endpoint()
    manifest = tmp_path / "scaleout.toml"
    manifest.write_text(f"""
[app]
name = "scaleout-cli-test"
[[actor]]
name = "broker"
kind = "inference_broker"
[actor.config]
endpoint = "{endpoint}"
worker_endpoint = "{workers_ep}"
events_endpoint = "{events_ep}"
workers = 1
heartbeat_interval = 0.2
queue_timeout = 20.0
""")
    command = [sys.executable, "-m", "switchyard.runtime.cli", "run", str(manifest)]
    async with trio.open_nursery() as nursery:
        cli = await nursery.start(partial(trio.run_process, command, check=False))
        [[frame]] = await trio.to_thread.run_sync(
            partial(req_roundtrips, endpoint, [digit_task("cli", pixels(6))], timeout=30)
        )
        reply = parse_reply(frame)
        assert reply.ok and reply.result["label"] == EXPECTED[6]
        children = {
            int(p)
            for f in os.listdir(f"/proc/{cli.pid}/task")
            for p in open(f"/proc/{cli.pid}/task/{f}/children").read().split()
        }
        assert len(children) == 1
        [worker_pid] = children
        cli.kill()  # SIGKILL: the broker gets no chance to stop its workers
        await cli.wait()
        try:
            with trio.fail_after(10):
                while _proc_state(worker_pid) not in ("Z", "gone"):
                    await trio.sleep(0.1)
        finally:
            if _proc_state(worker_pid) not in ("Z", "gone"):
                os.kill(worker_pid, signal.SIGKILL)  # don't leave an orphan behind a failed test


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
