"""IPC socket server and client over real Unix and TCP sockets."""

from __future__ import annotations

import os
import socket
import stat
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from switchyard.protocols.codec import json_codec, msgpack_codec
from switchyard.protocols.ipc import Kind, Message
from switchyard.protocols.ipc_framing import MessageReader, encode_frame, frame_body
from switchyard.testing import free_tcp_port
from switchyard.testing.ipc import read_messages
from switchyard.transports.ipc.address import parse_address, socket_path_for
from switchyard.transports.ipc.client import Backoff, SocketClient, open_ipc_client
from switchyard.transports.ipc.errors import (
    ConnectionLost,
    NotConnected,
    RemoteError,
    RequestTimeout,
    ServerAlreadyRunning,
)
from switchyard.transports.ipc.server import SocketServer, current_request, request

FAST = {"reconnect_interval": 0.05, "reconnect_max_interval": 0.2, "connect_timeout": 2.0}


@pytest.fixture(params=["unix", "tcp"])
def address(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "unix":
        return str(tmp_path / "test.sock")
    return "tcp://127.0.0.1:0"


def seed_server(address: str, **options: Any) -> SocketServer:
    """The seed's quick-start server: echo and add, plus a push trigger."""
    server = SocketServer(address, account_id="test_account", **options)

    @request("echo")
    async def handle_echo(data: dict) -> dict:
        return {"echo": data}

    server.register_handler("echo", handle_echo)

    async def handle_add(data: dict) -> dict:
        return {"result": data.get("a", 0) + data.get("b", 0)}

    server.register_handler("add", handle_add)

    @server.handler("notify_me")
    async def notify_me(data: dict) -> str:
        await server.push("notification", {"text": data["text"]}, conn_id=current_request().conn_id)
        return "queued"

    return server


@asynccontextmanager
async def serving(server: SocketServer) -> AsyncIterator[str]:
    """Serve for the block; yields the address a client should dial."""
    async with server:
        assert server.bound_address is not None
        yield str(server.bound_address)


async def test_seed_quick_start(address: str) -> None:
    server = seed_server(address)
    async with serving(server) as dial:
        events: list[str] = []
        pushes: list[tuple[str, Any]] = []
        async with SocketClient(dial, account_id="test_account", heartbeat_interval=30.0, **FAST) as client:

            @client.on_push("notification")
            async def handle_notification(push_type: str, data: dict) -> None:
                pushes.append((push_type, data))

            client.set_connect_callback(lambda: events.append("connected"))
            client.set_disconnect_callback(lambda: events.append("disconnected"))
            assert await client.connect(max_retries=5)
            assert await client.request("echo", {"message": "hello"}) == {"echo": {"message": "hello"}}
            assert await client.request("add", {"a": 10, "b": 20}) == {"result": 30}
            assert await client.request("notify_me", {"text": "你好"}) == "queued"
            with trio.fail_after(5):
                while not pushes:
                    await trio.sleep(0.01)
            assert pushes == [("notification", {"text": "你好"})]
            assert await client.health_check() is True
            health = await client.server_health()
            assert health["status"] == "ok" and health["account_id"] == "test_account"
            assert health["connections"] == 1

            stats = client.get_stats()
            assert stats["connected"] is True and stats["requests"] == 4 and stats["pushes"] == 1
            assert stats["conn_id"] == server.connections[0]
            server_stats = server.get_stats()
            assert server_stats["connections"] == 1 and server_stats["connections_total"] == 1
            assert server_stats["methods"]["echo"]["calls"] == 1
            assert server_stats["methods"]["add"]["calls"] == 1
            assert server_stats["methods"]["add"]["mean_ms"] >= 0
            assert server_stats["messages_received"] >= 5 and server_stats["messages_sent"] >= 6
            assert server_stats["errors"] == 0
            await client.disconnect()
            assert not client.connected
            with pytest.raises(NotConnected):
                await client.request("echo", {})
            assert await client.connect()  # and back
            assert await client.request("add", {"a": 1, "b": 1}) == {"result": 2}
        assert events == ["connected", "connected"]  # disconnect() is not a drop


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_errors_come_back_as_remote_errors_and_the_server_goes_on(
    address: str, codec: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = seed_server(address)

    def fail(data: Any) -> None:
        raise ValueError(f"bad value {data!r}")

    server.register_handler("fail", fail)
    server.register_handler("blob", lambda data: b"\x00\x01")
    async with serving(server) as dial, open_ipc_client(dial, codec=codec, **FAST) as client:
        with pytest.raises(RemoteError) as info:
            await client.request("fail", 42)
        assert info.value.code == "handler_error" and "ValueError: bad value 42" in info.value.detail
        with pytest.raises(RemoteError) as info:
            await client.request("no_such_method", {})
        assert info.value.code == "unknown_method" and "'no_such_method'" in info.value.detail
        assert "echo" in info.value.detail  # names what is known
        if codec == "json":
            with pytest.raises(RemoteError, match="cannot be sent"):
                await client.request("blob")
        else:
            assert await client.request("blob") == b"\x00\x01"
        assert await client.request("add", {"a": 1, "b": 2}) == {"result": 3}
        stats = server.get_stats()
        assert stats["methods"]["fail"] == {**stats["methods"]["fail"], "calls": 1, "errors": 1}
        assert stats["errors"] >= 2
    assert sum("handler for 'fail'" in r.getMessage() for r in caplog.records) == 1


async def test_a_blocked_handler_does_not_block_the_connection(tmp_path: Any) -> None:
    server = SocketServer(str(tmp_path / "s.sock"))
    release = trio.Event()
    started: list[int] = []

    async def slow(n: int) -> int:
        started.append(n)
        await release.wait()
        return n

    async def delayed(data: dict) -> dict:
        await trio.sleep(data["delay"])
        return data

    server.register_handler("slow", slow)
    server.register_handler("delayed", delayed)
    server.register_handler("echo", lambda data: data)
    async with serving(server) as dial, open_ipc_client(dial, **FAST) as client:
        results: dict[int, Any] = {}

        async def call(n: int) -> None:
            results[n] = await client.request("slow", n)

        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(call, n)
            with trio.fail_after(5):
                while len(started) < 3:
                    await trio.sleep(0.01)
            # Three handlers blocked on one connection; the connection still answers.
            assert await client.request("echo", "still here") == "still here"
            assert server.get_stats()["in_flight"] == 3
            release.set()
        assert results == {0: 0, 1: 1, 2: 2}

        # Many concurrent requests finishing in scrambled order get their own answers.
        answers: dict[int, Any] = {}

        async def scrambled(i: int) -> None:
            answers[i] = await client.request("delayed", {"i": i, "delay": (i * 7 % 10) / 500})

        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(scrambled, i)
        assert all(answers[i]["i"] == i for i in range(60))


async def test_max_in_flight_pauses_reading(tmp_path: Any) -> None:
    server = SocketServer(str(tmp_path / "s.sock"), max_in_flight=2)
    release = trio.Event()
    running = 0
    peak = 0

    async def slow(n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return n

    server.register_handler("slow", slow)
    async with serving(server) as dial, open_ipc_client(dial, **FAST) as client:
        done: list[int] = []

        async def call(n: int) -> None:
            done.append(await client.request("slow", n))

        async with trio.open_nursery() as nursery:
            for n in range(6):
                nursery.start_soon(call, n)
            await trio.sleep(0.3)
            # Two handed off to their own tasks plus one finishing in the reading task.
            assert peak == 3 and done == []
            release.set()
        assert sorted(done) == list(range(6))
        assert peak == 3


async def test_timeout_cancels_the_handler_on_the_server(tmp_path: Any) -> None:
    server = SocketServer(str(tmp_path / "s.sock"))
    cancelled = trio.Event()

    async def forever(_: Any) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    server.register_handler("forever", forever)
    server.register_handler("echo", lambda data: data)
    async with serving(server) as dial, open_ipc_client(dial, **FAST) as client:
        with pytest.raises(RequestTimeout, match="'forever'"):
            await client.request("forever", None, timeout=0.2)
        with trio.fail_after(5):
            await cancelled.wait()
        assert await client.request("echo", 1) == 1
        assert client.get_stats()["timeouts"] == 1
        assert server.get_stats()["methods"]["forever"]["errors"] == 1


async def test_streams_are_paced_by_credit_and_cancelled_on_early_exit(tmp_path: Any) -> None:
    server = SocketServer(str(tmp_path / "s.sock"))
    produced = 0
    closed = trio.Event()

    async def count(data: dict) -> AsyncIterator[int]:
        nonlocal produced
        try:
            for i in range(data["n"]):
                produced += 1
                yield i
                if data.get("fail_at") == i:
                    raise RuntimeError(f"broke at {i}")
        finally:
            closed.set()

    server.register_handler("count", count)
    server.register_handler("not_a_stream", lambda data: 1)
    async with serving(server) as dial, open_ipc_client(dial, stream_window=4, **FAST) as client:
        async with client.stream("count", {"n": 50}) as items:
            assert [item async for item in items] == list(range(50))

        closed = trio.Event()
        produced = 0
        async with client.stream("count", {"n": 10_000}) as items:
            got = []
            async for item in items:
                got.append(item)
                await trio.sleep(0.02)  # let the producer run ahead if it could
                assert produced <= len(got) + 4 + 1  # window + the one being offered
                if len(got) == 10:
                    break
        with trio.fail_after(5):
            await closed.wait()
        assert produced < 30

        seen: list[int] = []
        with pytest.raises(RemoteError, match="broke at 3"):
            async with client.stream("count", {"n": 10, "fail_at": 3}) as items:
                async for item in items:
                    seen.append(item)
        assert seen == [0, 1, 2, 3]  # every item before the failure arrives
        with pytest.raises(RemoteError, match="does not stream"):
            async with client.stream("not_a_stream") as items:
                async for _item in items:
                    pass
        with pytest.raises(RemoteError, match="streams: call it with client.stream"):
            await client.request("count", {"n": 1})
        assert client.get_stats()["open_streams"] == 0


async def test_unix_socket_is_owner_only_and_removed_on_stop(tmp_path: Any) -> None:
    path = str(tmp_path / "perm.sock")
    async with serving(SocketServer(path)):
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert [p.name for p in tmp_path.iterdir()] == ["perm.sock"]  # staging dir is gone
    assert not os.path.exists(path)


async def test_stale_socket_from_a_crashed_server_is_replaced(tmp_path: Any) -> None:
    path = str(tmp_path / "stale.sock")
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(path)  # bound, never listening, then gone: what a crash leaves behind
    crashed.close()
    assert os.path.exists(path)
    server = SocketServer(path)
    server.register_handler("echo", lambda data: data)
    async with serving(server), open_ipc_client(path, **FAST) as client:
        assert await client.request("echo", "fresh") == "fresh"


async def test_a_live_server_or_a_plain_file_is_never_removed(tmp_path: Any) -> None:
    path = str(tmp_path / "live.sock")
    async with serving(SocketServer(path)):
        with pytest.raises(ServerAlreadyRunning):
            async with SocketServer(path):
                pass
        assert os.path.exists(path)
    plain = tmp_path / "plain.sock"
    plain.write_text("keep me")
    with pytest.raises(FileExistsError):
        async with SocketServer(str(plain)):
            pass
    assert plain.read_text() == "keep me"


async def test_stop_leaves_a_successors_socket_alone(tmp_path: Any) -> None:
    path = str(tmp_path / "succ.sock")
    first = SocketServer(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.serve)
        os.unlink(path)  # someone removed it; a successor binds the same path
        second = SocketServer(path)
        second.register_handler("who", lambda _: "second")
        await nursery.start(second.serve)
        await first.aclose()
        assert os.path.exists(path)
        async with open_ipc_client(path, **FAST) as client:
            assert await client.request("who") == "second"
        await second.aclose()
    assert not os.path.exists(path)


async def test_one_socket_path_per_account(tmp_path: Any) -> None:
    paths = {socket_path_for(name, tmp_path) for name in ("alice", "bob")}
    assert paths == {str(tmp_path / "alice.sock"), str(tmp_path / "bob.sock")}
    with pytest.raises(ValueError):
        socket_path_for("../escape", tmp_path)
    server = SocketServer(socket_path_for("alice", tmp_path), account_id="alice")
    server.register_handler("whoami", lambda _: current_request().server.account_id)
    async with serving(server) as dial:
        async with open_ipc_client(dial, account_id="alice", **FAST) as client:
            assert await client.request("whoami") == "alice"
        async with SocketClient(dial, account_id="bob", **FAST) as wrong:
            assert await wrong.connect(max_retries=2) is False
            assert wrong.get_stats()["failed_connects"] == 2


async def test_connect_gives_up_after_max_retries(tmp_path: Any) -> None:
    async with SocketClient(str(tmp_path / "nobody.sock"), **FAST) as client:
        with trio.fail_after(5):
            assert await client.connect(max_retries=3) is False
        assert client.get_stats()["failed_connects"] == 3
        with pytest.raises(NotConnected):
            await client.request("echo", {})


@pytest.mark.parametrize("family", ["unix", "tcp"])
async def test_server_restart_under_a_connected_client(tmp_path: Any, family: str) -> None:
    # The restarted server must come back on the same address: a fixed port for TCP.
    path = str(tmp_path / "restart.sock") if family == "unix" else f"tcp://127.0.0.1:{free_tcp_port()}"
    events: list[str] = []
    entered = trio.Event()

    def make_server(generation: int) -> SocketServer:
        server = SocketServer(path, grace_period=0.2)
        server.register_handler("generation", lambda _: generation)

        async def slow(_: Any) -> None:
            entered.set()
            await trio.sleep_forever()

        server.register_handler("slow", slow)
        return server

    async with SocketClient(path, heartbeat_interval=30.0, **FAST) as client:
        client.set_connect_callback(lambda: events.append("connected"))
        client.set_disconnect_callback(lambda: events.append("disconnected"))
        async with trio.open_nursery() as nursery:
            first = make_server(1)
            await nursery.start(first.serve)
            assert await client.connect()
            assert await client.request("generation") == 1

            failures: list[BaseException] = []

            async def in_flight() -> None:
                try:
                    await client.request("slow", None, timeout=10)
                except (ConnectionLost, RemoteError) as exc:
                    failures.append(exc)

            nursery.start_soon(in_flight)
            await entered.wait()
            first._serve_scope.cancel()  # the server dies: no goodbye, sockets just close
            with trio.fail_after(5):
                while not failures:
                    await trio.sleep(0.01)
            assert isinstance(failures[0], ConnectionLost) and "'slow'" in str(failures[0])

            # A request made while the server is down waits for the reconnect.
            answer: list[int] = []

            async def waiting_request() -> None:
                answer.append(await client.request("generation", timeout=10))

            nursery.start_soon(waiting_request)
            await trio.sleep(0.3)
            assert answer == [] and not client.connected
            second = make_server(2)
            await nursery.start(second.serve)
            with trio.fail_after(5):
                while not answer:
                    await trio.sleep(0.01)
            assert answer == [2]
            assert await client.request("generation") == 2

            # A graceful stop answers what is in flight with shutting_down.
            entered = trio.Event()
            failures.clear()
            nursery.start_soon(in_flight)
            await entered.wait()
            await second.aclose()
            assert isinstance(failures[0], RemoteError) and failures[0].code == "shutting_down"
            nursery.cancel_scope.cancel()
    assert events[:3] == ["connected", "disconnected", "connected"]


async def test_requests_time_out_while_waiting_for_a_server_that_never_returns(tmp_path: Any) -> None:
    path = str(tmp_path / "gone.sock")
    server = SocketServer(path)
    server.register_handler("echo", lambda data: data)
    async with SocketClient(path, max_reconnect_attempts=0, **FAST) as client:
        async with serving(server):
            assert await client.connect()
        with pytest.raises(RequestTimeout):
            await client.request("echo", 1, timeout=0.3)
    async with SocketClient(path, max_reconnect_attempts=2, **FAST) as client:
        async with serving(SocketServer(path)):
            assert await client.connect()
        with trio.fail_after(5):
            with pytest.raises(NotConnected):  # gave up after two failed attempts
                await client.request("echo", 1, timeout=5)


async def raw_connect(address: str) -> trio.SocketStream:
    parsed = parse_address(address)
    if parsed.path is not None:
        return await trio.open_unix_socket(parsed.path)
    return await trio.open_tcp_stream(parsed.host, parsed.port)


async def test_a_client_that_stops_answering_heartbeats_is_dropped(address: str) -> None:
    server = SocketServer(address, health_check_interval=0.1, heartbeat_timeout=0.4)
    async with serving(server) as dial:
        stream = await raw_connect(dial)
        reader = MessageReader()
        await stream.send_all(encode_frame(Message.request("h", "ipc.hello", {}), json_codec))
        (welcome,) = await read_messages(stream, reader, 1)
        assert welcome.kind is Kind.RESPONSE and welcome.data["heartbeat_timeout"] == 0.4
        assert server.get_connection_count() == 1
        with trio.fail_after(5):
            # Pings arrive; we never answer; the server hangs up.
            pings = await read_messages(stream, reader, 10)
        assert pings and all(m.is_ping for m in pings)
        assert len(pings) < 10  # the connection ended before ten pings
        with trio.fail_after(2):
            while server.get_connection_count():
                await trio.sleep(0.01)
        await stream.aclose()


async def test_a_server_that_stops_answering_heartbeats_is_dropped(tmp_path: Any) -> None:
    path = str(tmp_path / "mute.sock")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen()
    listener = trio.SocketListener(sock)
    accepted = 0

    async def mute_server(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        reader = MessageReader()
        (hello,) = await read_messages(stream, reader, 1)
        await stream.send_all(encode_frame(hello.reply({"conn_id": "mute"}), json_codec))
        await trio.sleep_forever()  # then silence: no pongs, nothing

    events: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, mute_server, [listener])
        async with SocketClient(path, heartbeat_interval=0.1, heartbeat_timeout=0.4, **FAST) as client:
            client.set_disconnect_callback(lambda: events.append("disconnected"))
            assert await client.connect()
            with trio.fail_after(5):
                while not events:
                    await trio.sleep(0.02)
                while accepted < 2:  # and it reconnects
                    await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert events[0] == "disconnected"


async def test_bad_frames_get_errors_in_the_peers_codec_and_others_are_unaffected(address: str) -> None:
    server = seed_server(address, max_frame_size=1024)
    async with serving(server) as dial, open_ipc_client(dial, **FAST) as bystander:
        for codec in (json_codec, msgpack_codec):
            stream = await raw_connect(dial)
            reader = MessageReader(codec=codec)
            # The codec is fixed by the first body; then a body that is not a message.
            await stream.send_all(encode_frame(Message.request("1", "add", {"a": 1, "b": 1}), codec))
            await stream.send_all(frame_body(codec.encode({"kind": "shout"})))
            await stream.send_all(frame_body(b"\x00garbage"))
            first, second, third = await read_messages(stream, reader, 3)
            assert first.data == {"result": 2}
            assert (
                second.kind is Kind.ERROR
                and second.data["code"] == "bad_message"
                and "'kind'" in second.data["message"]
            )
            assert third.kind is Kind.ERROR and third.data["code"] == "bad_message"
            # A header over the limit: an error, then the server hangs up.
            await stream.send_all(struct.pack(">I", 1 << 20))
            (fatal,) = await read_messages(stream, reader, 1)
            assert fatal.data["code"] == "frame_too_large"
            assert await stream.receive_some(10) == b""
            await stream.aclose()
        assert await bystander.request("echo", "fine") == {"echo": "fine"}
        assert server.get_stats()["errors"] >= 6


async def test_too_many_connections_are_refused_with_an_error(tmp_path: Any) -> None:
    path = str(tmp_path / "full.sock")
    server = seed_server(path, max_connections=1)
    async with serving(server), open_ipc_client(path, **FAST) as first:
        stream = await raw_connect(path)
        (refusal,) = await read_messages(stream, MessageReader(), 1)
        assert refusal.kind is Kind.ERROR and refusal.data["code"] == "too_many_connections"
        await stream.aclose()
        assert await first.request("add", {"a": 2, "b": 2}) == {"result": 4}


async def test_client_pushes_are_notifications(tmp_path: Any) -> None:
    server = SocketServer(str(tmp_path / "n.sock"))
    seen: list[Any] = []
    server.register_handler("log", seen.append)
    async with serving(server) as dial, open_ipc_client(dial, **FAST) as client:
        await client.notify("log", {"line": 1})
        await client.notify("log", {"line": 2})
        with trio.fail_after(5):
            while len(seen) < 2:
                await trio.sleep(0.01)
        assert seen == [{"line": 1}, {"line": 2}]


async def test_push_to_one_client_or_all(tmp_path: Any) -> None:
    server = SocketServer(str(tmp_path / "p.sock"))
    server.register_handler("whoami", lambda _: current_request().conn_id)
    async with serving(server) as dial:
        got: dict[str, list[Any]] = {"a": [], "b": []}
        async with open_ipc_client(dial, **FAST) as a, open_ipc_client(dial, **FAST) as b:
            a.on_push("news")(lambda _t, data: got["a"].append(data))
            b.on_push("news")(lambda _t, data: got["b"].append(data))
            a_id = await a.request("whoami")
            assert await server.push("news", "to all") == 2
            assert await server.push("news", "to a", conn_id=a_id) == 1
            with pytest.raises(LookupError):
                await server.push("news", "x", conn_id="nobody")
            with trio.fail_after(5):
                while len(got["a"]) < 2 or not got["b"]:
                    await trio.sleep(0.01)
            assert got == {"a": ["to all", "to a"], "b": ["to all"]}


def test_backoff_grows_by_half_to_fifteen_seconds_with_jitter() -> None:
    plain = Backoff(jitter=0.0)
    delays = [plain.next() for _ in range(12)]
    assert delays[:4] == [0.5, 0.75, 1.125, 1.6875]
    assert max(delays) == 15.0 and delays[-1] == 15.0
    plain.reset()
    assert plain.next() == 0.5
    low, high = Backoff(rng=lambda: 0.0), Backoff(rng=lambda: 1.0)
    assert low.next() == pytest.approx(0.45) and high.next() == pytest.approx(0.55)
    capped = Backoff(rng=lambda: 1.0)
    assert max(capped.next() for _ in range(20)) == 15.0
    with pytest.raises(ValueError):
        Backoff(multiplier=0.5)


async def test_shutdown_answers_every_blocked_handler_even_beyond_max_in_flight(tmp_path: Any) -> None:
    server = SocketServer(str(tmp_path / "s.sock"), max_in_flight=1, grace_period=0.1)
    entered = 0

    async def stuck(n: int) -> None:
        nonlocal entered
        entered += 1
        await trio.sleep_forever()

    server.register_handler("stuck", stuck)
    outcomes: dict[int, str] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        async with open_ipc_client(str(server.bound_address), **FAST) as client:

            async def call(n: int) -> None:
                try:
                    await client.request("stuck", n, timeout=10)
                except RemoteError as exc:
                    outcomes[n] = exc.code
                except ConnectionLost:
                    outcomes[n] = "lost"

            async with trio.open_nursery() as calls:
                for n in range(3):
                    calls.start_soon(call, n)
                with trio.fail_after(5):
                    while entered < 2:  # one handed off, one holding the reading task
                        await trio.sleep(0.01)
                await trio.sleep(0.1)
                assert entered == 2  # the third waits unread: backpressure
                await server.aclose()
    # The unread third is read once the reading task is free again, and refused.
    assert outcomes == {0: "shutting_down", 1: "shutting_down", 2: "shutting_down"}
