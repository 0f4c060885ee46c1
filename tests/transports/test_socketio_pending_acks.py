"""PendingAck: a handler answers later while the server reads the client's next events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio_websocket

from switchyard.transports.socketio_server import PendingAck, SocketIOClient, SocketIOConfig, SocketIOServer


class Later:
    """``later`` events answer through a PendingAck the test resolves; others at once."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.pending: list[tuple[trio.Event, list[Any]]] = []
        self.abandoned: list[Any] = []
        self.queued = trio.Event()
        self.disconnected = trio.Event()

    async def on_connect(self, client: SocketIOClient, auth: Any) -> None:
        return None

    async def on_event(self, client: SocketIOClient, name: str, args: list[Any]) -> Any:
        self.events.append(args[0])
        if name == "later":
            done, box = trio.Event(), [args]
            self.pending.append((done, box))
            self.queued.set()

            async def wait() -> Any:
                await done.wait()
                if box[0] == "fail":
                    raise RuntimeError("wait failed")
                return box[0]

            return PendingAck(wait, lambda: self.abandoned.append(args[0]))
        return args

    async def on_disconnect(self, client: SocketIOClient, reason: str) -> None:
        self.disconnected.set()

    def answer(self, index: int, value: Any = None) -> None:
        done, box = self.pending[index]
        if value is not None:
            box[0] = value
        done.set()

    async def wait_events(self, count: int) -> None:
        with trio.fail_after(5):
            while len(self.events) < count:
                await trio.sleep(0.005)


@asynccontextmanager
async def connected(handler: Later, **options: Any) -> AsyncIterator[tuple[trio_websocket.WebSocketConnection, Any]]:
    server = SocketIOServer(handler, SocketIOConfig(port=0, **options))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        async with trio_websocket.open_websocket_url(
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
        ) as ws:
            await ws.get_message()
            await ws.send_message("40")
            assert str(await ws.get_message()).startswith("40")
            yield ws, server
        nursery.cancel_scope.cancel()


async def test_later_events_overlap_and_acks_keep_event_order() -> None:
    handler = Later()
    async with connected(handler) as (ws, _):
        await ws.send_message('420["later",0]')
        await ws.send_message('421["echo",1]')
        await ws.send_message('422["later",2]')
        await ws.send_message('423["echo",3]')
        await handler.wait_events(4)  # every event was handled before the first one was answered
        with trio.move_on_after(0.1):
            raise AssertionError(f"an ack went out before its turn: {await ws.get_message()!r}")
        handler.answer(1, ["second"])  # the later one is ready first: it still waits for event 0
        with trio.move_on_after(0.1):
            raise AssertionError(f"an ack went out before its turn: {await ws.get_message()!r}")
        handler.answer(0)
        with trio.fail_after(5):
            acks = [await ws.get_message() for _ in range(4)]
    assert acks == ["430[0]", "431[1]", '432["second"]', "433[3]"]
    assert handler.abandoned == []


async def test_a_failing_wait_sends_no_ack_and_later_acks_still_go() -> None:
    handler = Later()
    async with connected(handler) as (ws, _):
        await ws.send_message('420["later",0]')
        await ws.send_message('421["echo",1]')
        await handler.wait_events(2)
        handler.answer(0, "fail")
        with trio.fail_after(5):
            assert await ws.get_message() == "431[1]"


async def test_pending_acks_are_bounded() -> None:
    handler = Later()
    async with connected(handler, max_pending_acks=2) as (ws, _):
        for i in range(4):
            await ws.send_message(f'42{i}["later",{i}]')
        await handler.wait_events(3)  # the third was handled and waits for room: the fourth is not read
        await trio.sleep(0.1)
        assert handler.events == [0, 1, 2]
        handler.answer(0)
        await handler.wait_events(4)
        for i in range(1, 4):
            handler.answer(i)
        with trio.fail_after(5):
            acks = [await ws.get_message() for _ in range(4)]
    assert acks == [f"43{i}[{i}]" for i in range(4)]


async def test_the_end_of_the_session_abandons_pending_acks() -> None:
    handler = Later()
    async with connected(handler) as (ws, server):
        await ws.send_message('420["later",0]')
        await ws.send_message('421["later",1]')
        await handler.wait_events(2)
        await ws.aclose()
        with trio.fail_after(5):
            await handler.disconnected.wait()
            while len(handler.abandoned) < 2:
                await trio.sleep(0.01)
        assert sorted(set(handler.abandoned)) == [0, 1]  # the one being awaited and the one queued
        with trio.fail_after(5):
            while server.engine.sessions:
                await trio.sleep(0.01)
