"""Socket.IO server limits against hostile raw clients: bodies refused before they are
read, the total of buffered bodies, clients that stop reading, and bad-input logs that
stay a few lines however much garbage arrives."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import trio
import trio_websocket
from test_socketio_server import serve

from switchyard.transports.http_server import HttpLimits
from switchyard.transports.socketio_engine import SessionEnded
from switchyard.transports.socketio_server import SocketIOServer

RS = "\x1e"


async def http_exchange(port: int, head: bytes, body: bytes = b"", *, timeout: float = 3.0) -> tuple[int, bytes]:
    """Send ``head`` (and ``body``), read one response; (status, raw response)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head + body)
        data = b""
        with trio.fail_after(timeout):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
    return int(data.split(b" ", 2)[1]), data


async def open_session(port: int) -> str:
    status, raw = await http_exchange(port, b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    return str(json.loads(raw.split(b"\r\n\r\n", 1)[1][1:])["sid"])


def post_head(sid: str, length: int, path: str = "/socket.io/") -> bytes:
    return (
        f"POST {path}?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def test_refused_before_the_body_is_read() -> None:
    async with serve() as (port, _, server):
        big = 99 * 1024 * 1024  # declared, never sent
        status, raw = await http_exchange(port, post_head("no-such-sid", big))
        assert status == 400 and b'"code":1' in raw and b"connection: close" in raw.lower()
        status, _ = await http_exchange(port, post_head("x", big, path="/elsewhere"))
        assert status == 404
        sid = await open_session(port)
        put = post_head(sid, big).replace(b"POST", b"PUT", 1)
        status, _ = await http_exchange(port, put)
        assert status == 400
        assert server.http.buffered == 0


async def test_total_buffered_bodies_are_capped() -> None:
    limits = HttpLimits(max_body_bytes=600_000, max_buffered_bytes=1_000_000)
    async with serve(http=limits) as (port, _, server):
        sid = await open_session(port)
        body = ("4" + "x" * 499_999).encode()
        holder = await trio.open_tcp_stream("127.0.0.1", port)
        async with holder:
            await holder.send_all(post_head(sid, len(body)) + body[:1000])  # reserves 500 kB, sends 1 kB
            with trio.fail_after(3):
                while server.http.buffered < len(body):
                    await trio.sleep(0.01)
            status, raw = await http_exchange(port, post_head(sid, 600_000))  # 500 + 600 kB > 1 MB
            assert status == 503 and b"busy" in raw
            status, _ = await http_exchange(port, post_head(sid, 700_000))  # over max_body_bytes
            assert status == 413
        with trio.fail_after(3):
            while server.http.buffered:  # released when the holder went away
                await trio.sleep(0.01)


async def test_chunked_body_over_the_cap_is_cut_while_streaming() -> None:
    async with serve(http=HttpLimits(max_body_bytes=10_000)) as (port, _, server):
        sid = await open_session(port)
        head = (
            f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        chunk = b"%x\r\n%s\r\n" % (4000, b"4" * 4000)
        status, _ = await http_exchange(port, head + chunk * 3)
        assert status == 413
        assert server.http.buffered == 0


async def wait_connected(server: SocketIOServer) -> Any:
    with trio.fail_after(5):
        while not server.clients:
            await trio.sleep(0.01)
    return next(iter(server.clients.values()))


async def emit_until_dropped(server: SocketIOServer, client: Any, payload: str, limit: int) -> int:
    sent = 0
    try:
        while sent < limit:
            await client.emit("flood", payload)
            sent += 1
    except SessionEnded:
        return sent
    raise AssertionError(f"{limit} pushes to a client that reads nothing were all accepted")


async def test_websocket_client_that_stops_reading_is_dropped() -> None:
    payload = "p" * 65536
    async with serve(max_pending_out=8, send_timeout=0.5) as (port, handler, server):
        async with trio_websocket.open_websocket_url(
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", message_queue_size=1
        ) as ws:
            assert (await ws.get_message())[0] == "0"
            await ws.send_message("40")
            assert (await ws.get_message()).startswith("40")
            client = await wait_connected(server)
            started = trio.current_time()
            with trio.fail_after(15):
                sent = await emit_until_dropped(server, client, payload, 20_000)
                await handler.disconnected.wait()
            elapsed = trio.current_time() - started
        # Held at most: what the kernel buffers took, one batch being written, 8 queued.
        assert sent < 2_000, sent
        assert elapsed < 10, elapsed
        assert "read" in handler.disconnects[0], handler.disconnects


async def test_polling_client_that_stops_polling_is_dropped() -> None:
    async with serve(max_pending_out=8, send_timeout=0.5) as (port, handler, server):
        sid = await open_session(port)
        status, _ = await http_exchange(port, post_head(sid, 2), b"40")
        assert status == 200
        client = await wait_connected(server)
        with trio.fail_after(10):
            sent = await emit_until_dropped(server, client, "x" * 1000, 10_000)
            await handler.disconnected.wait()
        assert sent <= 8 + 1, sent  # the queue bound, then a send_timeout wait that fails
        assert "read nothing" in handler.disconnects[0]


async def test_bad_frames_log_a_few_lines_without_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    async with serve() as (port, _, server):
        with caplog.at_level(logging.INFO):
            for i in range(40):
                with trio.move_on_after(3):
                    try:
                        async with trio_websocket.open_websocket_url(
                            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
                        ) as ws:
                            await ws.get_message()
                            await ws.send_message("9garbage" if i % 2 else "40{not json")
                            while True:
                                await ws.get_message()
                    except trio_websocket.ConnectionClosed:
                        pass  # the server closed the session, as it should
            server.engine.bad_input.flush()
            server.bad_input.flush()
    mine = [r for r in caplog.records if r.name.startswith("switchyard")]
    bad = [r for r in mine if "bad frame" in r.getMessage() or "protocol error" in r.getMessage()]
    assert 2 <= len(bad) <= 20, [r.getMessage() for r in bad]
    assert any("suppressed" in r.getMessage() for r in mine)
    assert not any(r.exc_info for r in mine)
    assert all("\n" not in r.getMessage() for r in mine)


async def test_connection_cap_sheds_idle_then_trickling_bodies_never_busy_ones() -> None:
    limits = HttpLimits(max_connections=4, max_connections_per_peer=0)
    async with serve(http=limits) as (port, _, server):
        sid = await open_session(port)
        trickling = []
        for _ in range(4):  # a body slowloris: 1 byte of a declared 100
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(post_head(sid, 100) + b"4")
            trickling.append(stream)
        with trio.fail_after(3):
            while server.http.connections < 4 or server.http.buffered < 400:
                await trio.sleep(0.01)
        idle = await trio.open_tcp_stream("127.0.0.1", port)  # sheds the oldest trickling body
        try:
            with trio.fail_after(3):
                while server.http.shed < 1:
                    await trio.sleep(0.01)
            assert await open_session(port)  # sheds the idle one, then answers
            assert server.http.shed == 2
        finally:
            for stream in [*trickling, idle]:
                await stream.aclose()
