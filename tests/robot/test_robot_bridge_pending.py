"""The bridge queues forwarded events at the worker (Reply + PendingAck): same acks, in order."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from switchyard.runtime import Actor, System
from switchyard.services.robot.messages import Reply, RobotRequest, ack
from switchyard.services.robot.socketio_bridge import SocketIOBridgeActor
from switchyard.services.robot.worker import RobotWorkerActor
from switchyard.testing.ports import free_tcp_port
from switchyard.testing.system import run_system

GET_STATUS = {"params": {"object": "sport_client", "method": "get_status", "args": {}}}


class FakeWorker(Actor):
    """Answers ``process`` with its args after ``args.sleep`` seconds; records the order."""

    mailbox_capacity = 1  # the bridge's tell_nowait finds it full: the waiting path

    async def on_start(self) -> None:
        self.seen: list[Any] = []

    async def handle(self, message: Any) -> Any:
        assert isinstance(message, RobotRequest)
        if message.command == "stop":
            return None
        args = message.payload["params"]["args"]
        self.seen.append(args["n"])
        await trio.sleep(args.get("sleep", 0))
        value = ack("success", "done", args["n"])
        if message.reply_to is not None:
            message.reply_to.resolve(value)
        return value


class FailingWorker(RobotWorkerActor):
    async def _serve(self, message: RobotRequest) -> dict[str, Any]:
        raise RuntimeError("boom")


@asynccontextmanager
async def bridge(
    worker: type[Actor] | None, worker_config: dict[str, Any] | None = None, **bridge_config: Any
) -> AsyncIterator[tuple[System, trio_websocket.WebSocketConnection]]:
    port = free_tcp_port()
    async with run_system("robot-pending-test", grace_period=2.0) as system:
        if worker is not None:
            await system.spawn(worker, name="robot_worker", config=worker_config)
        await system.spawn(SocketIOBridgeActor, name="socketio_bridge", config={"port": port, **bridge_config})
        async with trio_websocket.open_websocket_url(
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
        ) as ws:
            await ws.get_message()
            await ws.send_message("40")
            assert str(await ws.get_message()).startswith("40")
            yield system, ws


async def acks(ws: trio_websocket.WebSocketConnection, count: int) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    with trio.fail_after(20):
        while len(out) < count:
            message = await ws.get_message()
            assert isinstance(message, str)
            if message.startswith("43"):
                head, _, body = message.partition("[")
                out.append((int(head[2:]), json.loads("[" + body)[0]))
    return out


def process_event(i: int, **args: Any) -> str:
    return f"42{i}" + json.dumps(["process", {"params": {"object": "o", "method": "m", "args": {"n": i, **args}}}])


async def test_real_worker_gives_the_same_acks_as_asked_in_order(tmp_path: Path) -> None:
    config = {"storage_root": str(tmp_path / "storage"), "max_execution_time": 30.0}
    async with bridge(RobotWorkerActor, config) as (system, ws):
        for i in range(6):  # sent back to back: each is queued at the worker before the previous is answered
            await ws.send_message(f"42{i}" + json.dumps(["process" if i % 3 else "echo", GET_STATUS]))
        got = await acks(ws, 6)
        asked = await system.lookup("robot_worker").ask(RobotRequest("process", GET_STATUS), timeout=30)
    assert [i for i, _ in got] == list(range(6))
    for i, value in got:
        assert value == (GET_STATUS if i % 3 == 0 else asked), (i, value)
    assert asked["status"] == "success"


async def test_a_full_worker_mailbox_waits_and_acks_stay_in_order() -> None:
    async with bridge(FakeWorker) as (_, ws):
        for i in range(5):
            await ws.send_message(process_event(i, sleep=0.02))
        got = await acks(ws, 5)
    assert got == [(i, ack("success", "done", i)) for i in range(5)]


async def test_request_timeout_counts_from_the_previous_answer() -> None:
    async with bridge(FakeWorker, request_timeout=0.5) as (_, ws):
        await ws.send_message(process_event(0, sleep=0.8))
        await ws.send_message(process_event(1))  # queued at once; answered at ~0.8 s, within 0.5 s of ack 0
        got = await acks(ws, 2)
    assert got == [(0, ack("error", "the robot worker did not answer within 0.5 s")), (1, ack("success", "done", 1))]


async def test_a_failing_worker_resolves_the_reply_with_an_error(tmp_path: Path) -> None:
    config = {"storage_root": str(tmp_path / "storage")}
    async with bridge(FailingWorker, config) as (_, ws):
        await ws.send_message(process_event(0))
        await ws.send_message('421["echo",1]')
        got = await acks(ws, 2)
    assert got == [(0, ack("error", "the robot worker failed: boom")), (1, 1)]


async def test_no_worker_is_an_error_ack() -> None:
    async with bridge(None) as (_, ws):
        await ws.send_message(process_event(0))
        got = await acks(ws, 1)
    assert got == [(0, ack("error", "no robot worker actor named 'robot_worker' is running"))]


async def test_the_worker_skips_an_abandoned_request(tmp_path: Path) -> None:
    async with run_system("robot-abandon-test", grace_period=2.0) as system:
        ref = await system.spawn(
            RobotWorkerActor, name="robot_worker", config={"storage_root": str(tmp_path / "s"), "notify": ""}
        )
        skipped, answered = Reply(), Reply()
        skipped.abandon()
        await ref.tell(RobotRequest("process", GET_STATUS, skipped))
        await ref.tell(RobotRequest("process", GET_STATUS, answered))
        with trio.fail_after(20):
            value = await answered.wait()
        asked = await ref.ask(RobotRequest("process", GET_STATUS), timeout=20)
    assert not skipped.resolved
    assert value == asked and asked["status"] == "success"
