"""The IPC client's reading role: a waiting request reads the socket itself; everything else still flows.

Real servers on real sockets: timeouts of the reading request, answers for parked
requests, pushes (also with a full push queue) and server pings while requests
read, the server going away mid-read, and no descriptor left behind per connection.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio

from switchyard.protocols.codec import json_codec
from switchyard.protocols.ipc_framing import MessageReader, encode_frame
from switchyard.transports.ipc.client import SocketClient, open_ipc_client
from switchyard.transports.ipc.errors import ConnectionLost, RequestTimeout
from switchyard.transports.ipc.server import SocketServer, current_request

FAST = {"reconnect_interval": 0.05, "reconnect_max_interval": 0.2, "connect_timeout": 2.0}


def _server(path: str, **options: Any) -> SocketServer:
    server = SocketServer(path, account_id="t", **options)
    release = trio.Event()

    async def slow(data: Any) -> Any:
        await release.wait()
        return data

    async def sleepy(seconds: float) -> float:
        await trio.sleep(seconds)
        return seconds

    async def push_then_answer(data: dict) -> int:
        for i in range(data["n"]):
            await server.push("tick", i, conn_id=current_request().conn_id)
        return data["n"]

    server.register_handler("echo", lambda data: data)
    server.register_handler("slow", slow)
    server.register_handler("sleepy", sleepy)
    server.register_handler("push_then_answer", push_then_answer)
    server.release = release  # type: ignore[attr-defined]
    return server


async def test_a_reading_request_times_out_and_parked_requests_still_get_their_answers(tmp_path: Any) -> None:
    server = _server(str(tmp_path / "s.sock"))
    async with server, open_ipc_client(str(tmp_path / "s.sock"), account_id="t", **FAST) as client:
        # Alone: nothing else arrives to wake the reading request, its timeout must.
        with trio.fail_after(2), pytest.raises(RequestTimeout):
            await client.request("slow", "alone", timeout=0.2)
        results: dict[str, Any] = {}

        async def call(name: str, method: str, data: Any, timeout: float) -> None:
            try:
                results[name] = await client.request(method, data, timeout=timeout)
            except RequestTimeout as exc:
                results[name] = exc

        async with trio.open_nursery() as nursery:
            # The first takes the reading role and times out while the others wait.
            nursery.start_soon(call, "first", "slow", "x", 0.2)
            await trio.sleep(0.01)
            for i in range(5):
                nursery.start_soon(call, f"sleepy{i}", "sleepy", 0.3 + i / 100, 5.0)
        assert isinstance(results["first"], RequestTimeout)
        assert [results[f"sleepy{i}"] for i in range(5)] == [0.3 + i / 100 for i in range(5)]
        assert await client.request("echo", 7) == 7
        assert client.get_stats()["timeouts"] == 2


async def test_cancelling_the_reading_request_hands_the_role_on(tmp_path: Any) -> None:
    server = _server(str(tmp_path / "s.sock"))
    async with server, open_ipc_client(str(tmp_path / "s.sock"), account_id="t", **FAST) as client:
        answers: list[Any] = []

        async def other() -> None:
            answers.append(await client.request("sleepy", 0.2))

        async with trio.open_nursery() as nursery:
            with trio.move_on_after(0.05) as scope:
                nursery.start_soon(other)
                await client.request("slow", None, timeout=10)  # reads; cancelled
            assert scope.cancelled_caught
        assert answers == [0.2]
        for i in range(20):  # many short round trips after the hand-overs
            assert await client.request("echo", i) == i


async def test_pushes_reach_handlers_while_requests_read_even_with_a_full_push_queue(tmp_path: Any) -> None:
    server = _server(str(tmp_path / "s.sock"))
    async with server, SocketClient(str(tmp_path / "s.sock"), account_id="t", push_queue_size=2, **FAST) as client:
        ticks: list[int] = []

        @client.on_push("tick")
        async def on_tick(_: str, i: int) -> None:
            await trio.sleep(0.001)  # slower than the server: the queue fills up
            ticks.append(i)

        assert await client.connect()
        # The request reads its own answer behind 50 pushes; most of them wait for
        # the queue in the idle reader, in order, and the answer comes after them.
        assert await client.request("push_then_answer", {"n": 50}, timeout=10) == 50
        with trio.fail_after(5):
            while len(ticks) < 50:
                await trio.sleep(0.01)
        assert ticks == list(range(50))
        assert await client.request("echo", "after") == "after"


async def test_server_pings_are_answered_while_the_client_is_busy_with_requests(tmp_path: Any) -> None:
    path = str(tmp_path / "s.sock")
    server = _server(path, health_check_interval=0.05, heartbeat_timeout=0.3)
    async with server, open_ipc_client(path, account_id="t", heartbeat_interval=0, **FAST) as client:
        # Requests that keep the reading role for far longer than the server's
        # heartbeat timeout: the pings reach the idle reader and are answered.
        for _ in range(3):
            assert await client.request("sleepy", 0.4, timeout=5) == 0.4
        # And while idle.
        await trio.sleep(0.6)
        assert await client.request("echo", 1) == 1
        assert client.get_stats()["connects"] == 1
        assert server.get_stats()["connections_total"] == 1


async def test_the_server_going_away_fails_the_reading_request_and_the_client_reconnects(tmp_path: Any) -> None:
    path = str(tmp_path / "s.sock")
    async with SocketClient(path, account_id="t", request_timeout=5, **FAST) as client:
        async with _server(path) as server:
            assert await client.connect()

            async def stop_soon() -> None:
                await trio.sleep(0.1)
                server._serve_scope.cancel()  # type: ignore[union-attr]  # no goodbye: sockets just close

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_soon)
                with pytest.raises(ConnectionLost):
                    await client.request("slow", None)
        async with _server(path):
            with trio.fail_after(5):
                assert await client.request("echo", "back") == "back"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
async def test_no_descriptor_is_left_behind_per_connection(tmp_path: Any) -> None:
    path = str(tmp_path / "s.sock")
    async with _server(path):
        for _ in range(3):  # warm up whatever the first connection opens once
            async with open_ipc_client(path, account_id="t", **FAST) as client:
                await client.request("echo", 0)
        before = len(os.listdir("/proc/self/fd"))
        for i in range(20):
            async with open_ipc_client(path, account_id="t", **FAST) as client:
                assert await client.request("echo", i) == i
        await trio.sleep(0.05)  # the server side closes its ends
        assert len(os.listdir("/proc/self/fd")) <= before


async def test_a_reading_request_times_out_even_when_the_server_never_answers_anything(tmp_path: Any) -> None:
    """Nothing arrives on the socket at all (not even the answer to ipc.cancel): the
    timeout itself must end the read."""
    path = str(tmp_path / "mute.sock")

    async def mute(stream: trio.SocketStream) -> None:
        reader = MessageReader(1 << 20)
        while (hello := reader.next_message()) is None:
            reader.receive_data(await stream.receive_some(65536))
        await stream.send_all(encode_frame(hello.reply({"conn_id": "mute"}), json_codec))
        while await stream.receive_some(65536):
            pass  # reads everything, answers nothing

    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, mute, [trio.SocketListener(sock)])
        async with open_ipc_client(path, heartbeat_interval=0, **FAST) as client:
            with trio.fail_after(2), pytest.raises(RequestTimeout):
                await client.request("anything", None, timeout=0.2)
            assert client.connected
        nursery.cancel_scope.cancel()
