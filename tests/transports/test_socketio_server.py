"""The Trio Socket.IO server transport against raw HTTP/WebSocket and python-socketio clients."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import socketio
import trio
import trio_websocket
from hypothesis import given, settings
from hypothesis import strategies as st

from switchyard.transports.socketio_engine import EngineConfig, origin_allowed
from switchyard.transports.socketio_server import ConnectRefused, SocketIOClient, SocketIOConfig, SocketIOServer

RS = "\x1e"


class Recorder:
    """A handler that echoes, records and can push."""

    def __init__(self) -> None:
        self.connects: list[Any] = []
        self.events: list[tuple[str, list[Any]]] = []
        self.disconnects: list[str] = []
        self.disconnected = trio.Event()
        self.refuse: str | None = None

    async def on_connect(self, client: SocketIOClient, auth: Any) -> None:
        if self.refuse:
            raise ConnectRefused(self.refuse, {"why": "test"})
        self.connects.append(auth)

    async def on_event(self, client: SocketIOClient, name: str, args: list[Any]) -> Any:
        self.events.append((name, args))
        if name == "push":
            await client.emit("pushed", *args)
        if name == "slow":
            await trio.sleep(0.05)
        return args

    async def on_disconnect(self, client: SocketIOClient, reason: str) -> None:
        self.disconnects.append(reason)
        self.disconnected.set()


@asynccontextmanager
async def serve(handler: Any = None, **options: Any) -> AsyncIterator[tuple[int, Any, SocketIOServer]]:
    engine_keys = {f.name for f in EngineConfig.__attrs_attrs__}
    engine = EngineConfig(**{k: v for k, v in options.items() if k in engine_keys})
    config = SocketIOConfig(port=0, engine=engine, **{k: v for k, v in options.items() if k not in engine_keys})
    handler = handler or Recorder()
    server = SocketIOServer(handler, config)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        yield port, handler, server
        nursery.cancel_scope.cancel()


def url(port: int, query: str = "EIO=4&transport=polling") -> str:
    return f"http://127.0.0.1:{port}/socket.io/?{query}"


async def wait_gone(server: SocketIOServer, sid: str) -> None:
    with trio.fail_after(5):
        while sid in server.engine.sessions:
            await trio.sleep(0.01)


async def handshake(http: httpx.AsyncClient, port: int) -> dict[str, Any]:
    response = await http.get(url(port))
    assert response.status_code == 200
    assert response.text[0] == "0"
    return json.loads(response.text[1:])


async def test_polling_handshake_and_socketio_flow() -> None:
    async with serve(max_payload=12345, ping_interval=7.0) as (port, handler, _), httpx.AsyncClient() as http:
        info = await handshake(http, port)
        assert info["upgrades"] == ["websocket"]
        assert info["pingInterval"] == 7000 and info["maxPayload"] == 12345 and len(info["sid"]) >= 16
        sid = info["sid"]
        q = f"EIO=4&transport=polling&sid={sid}"
        assert (await http.post(url(port, q), content='40{"token":"abc"}')).text == "ok"
        got = (await http.get(url(port, q))).text
        assert got.startswith('40{"sid":"')
        assert handler.connects == [{"token": "abc"}]
        await http.post(url(port, q), content=f'421["echo",1,"é"]{RS}422["echo",{{"a":null}}]')
        assert (await http.get(url(port, q))).text == f'431[1,"é"]{RS}432[{{"a":null}}]'
        # binary attachment over polling: base64 "b" packets
        await http.post(url(port, q), content=f'451-3["echo",{{"_placeholder":true,"num":0}}]{RS}bAAEC')
        assert (await http.get(url(port, q))).text == f'461-3[{{"_placeholder":true,"num":0}}]{RS}bAAEC'
        await http.post(url(port, q), content="41")
        await handler.disconnected.wait()
        assert handler.disconnects == ["client namespace disconnect"]


@pytest.mark.parametrize(
    ("query", "method", "code"),
    [
        ("EIO=3&transport=polling", "GET", 5),
        ("EIO=4&transport=flashsocket", "GET", 0),
        ("EIO=4&transport=polling&sid=nope", "GET", 1),
        ("EIO=4&transport=polling", "POST", 2),
    ],
)
async def test_engineio_errors(query: str, method: str, code: int) -> None:
    async with serve() as (port, _, _), httpx.AsyncClient() as http:
        response = await http.request(method, url(port, query), content=b"x" if method == "POST" else None)
        assert response.status_code == 400
        assert response.json()["code"] == code
        assert (await http.get(f"http://127.0.0.1:{port}/elsewhere")).status_code == 404


async def test_cors() -> None:
    async with serve(cors_allowed_origins=("http://app.example:*", "https://ui.example")) as (port, _, _):
        async with httpx.AsyncClient() as http:
            pre = await http.options(
                url(port),
                headers={"Origin": "http://app.example:5173", "Access-Control-Request-Headers": "content-type"},
            )
            assert pre.status_code == 204
            assert pre.headers["access-control-allow-origin"] == "http://app.example:5173"
            assert pre.headers["access-control-allow-credentials"] == "true"
            ok = await http.get(url(port), headers={"Origin": "https://ui.example"})
            assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://ui.example"
            bad = await http.get(url(port), headers={"Origin": "http://evil.example"})
            assert bad.status_code == 403 and bad.json()["code"] == 4
            plain = await http.get(url(port))  # no Origin: not a browser, not CORS-restricted
            assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers
        with pytest.raises(trio_websocket.HandshakeError):
            async with trio_websocket.open_websocket_url(
                f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket",
                extra_headers=[("Origin", "http://evil.example")],
            ):
                pass


def test_origin_patterns() -> None:
    allowed = ("http://localhost:*", "https://a.example")
    assert origin_allowed("http://localhost:3000", allowed)
    assert origin_allowed("http://localhost", allowed)
    assert not origin_allowed("http://localhost.evil.com:3000", allowed)
    assert not origin_allowed("http://localhost:3000x", allowed)
    assert origin_allowed("https://a.example/", allowed)
    assert not origin_allowed("http://a.example", allowed)
    assert origin_allowed("null", ("*",))


async def test_post_over_max_payload_closes() -> None:
    async with serve(max_payload=1000) as (port, _, server), httpx.AsyncClient() as http:
        sid = (await handshake(http, port))["sid"]
        response = await http.post(url(port, f"EIO=4&transport=polling&sid={sid}"), content="4" + "x" * 1000)
        assert response.status_code == 413
        await wait_gone(server, sid)


async def test_overlapping_polls_close_session() -> None:
    async with serve() as (port, _, server), httpx.AsyncClient() as http:
        sid = (await handshake(http, port))["sid"]
        q = url(port, f"EIO=4&transport=polling&sid={sid}")
        results: list[int] = []

        async def poll() -> None:
            results.append((await http.get(q)).status_code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.sleep(0.2)
            nursery.start_soon(poll)
        assert sorted(results) == [400, 400]
        await wait_gone(server, sid)


async def test_ping_timeout_disconnects() -> None:
    async with serve(ping_interval=0.2, ping_timeout=0.3) as (port, handler, _server), httpx.AsyncClient() as http:
        sid = (await handshake(http, port))["sid"]
        q = url(port, f"EIO=4&transport=polling&sid={sid}")
        await http.post(q, content="40")
        assert (await http.get(q)).text.startswith("40")
        assert (await http.get(q)).text == "2"  # the server's ping after ping_interval
        with trio.fail_after(3):
            await handler.disconnected.wait()
        assert handler.disconnects == ["ping timeout"]
        assert (await http.get(q)).json()["code"] == 1


async def test_pong_keeps_session_alive() -> None:
    async with serve(ping_interval=0.1, ping_timeout=0.2) as (port, _handler, server), httpx.AsyncClient() as http:
        sid = (await handshake(http, port))["sid"]
        q = url(port, f"EIO=4&transport=polling&sid={sid}")
        for _ in range(5):
            assert (await http.get(q)).text == "2"
            await http.post(q, content="3")
        assert sid in server.engine.sessions


async def test_connect_timeout_closes_idle_session() -> None:
    async with serve(connect_timeout=0.2) as (port, _, server), httpx.AsyncClient() as http:
        sid = (await handshake(http, port))["sid"]
        assert (await http.get(url(port, f"EIO=4&transport=polling&sid={sid}"))).text == "1"  # CLOSE
        await wait_gone(server, sid)


async def test_websocket_upgrade_by_hand() -> None:
    async with serve() as (port, handler, _), httpx.AsyncClient() as http:
        sid = (await handshake(http, port))["sid"]
        q = url(port, f"EIO=4&transport=polling&sid={sid}")
        await http.post(q, content="40")
        assert (await http.get(q)).text.startswith("40")
        pending: list[str] = []

        async def long_poll() -> None:
            pending.append((await http.get(q)).text)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            await trio.sleep(0.1)
            async with trio_websocket.open_websocket_url(
                f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket&sid={sid}"
            ) as ws:
                await ws.send_message("2probe")
                assert await ws.get_message() == "3probe"
                with trio.fail_after(2):
                    while not pending:
                        await trio.sleep(0.01)
                assert pending == ["6"]  # the paused poll is released with a NOOP
                await ws.send_message("5")
                await ws.send_message('427["echo","over ws"]')
                assert await ws.get_message() == '437["over ws"]'
                await ws.send_message('428["echo",1]')
                await ws.send_message(b"")  # a binary frame outside a binary packet: protocol error
                with pytest.raises(trio_websocket.ConnectionClosed):
                    while True:
                        await ws.get_message()
        assert (await http.get(q)).status_code == 400
        assert handler.disconnects == ["parse error"]


async def test_websocket_only_and_max_payload() -> None:
    async with serve(max_payload=2000) as (port, handler, _):
        async with trio_websocket.open_websocket_url(
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
        ) as ws:
            opened = await ws.get_message()
            assert opened.startswith("0") and json.loads(opened[1:])["upgrades"] == []
            await ws.send_message("40")
            assert (await ws.get_message()).startswith("40")
            await ws.send_message('42["echo","' + "x" * 3000 + '"]')
            with pytest.raises(trio_websocket.ConnectionClosed):
                while True:
                    await ws.get_message()
        with trio.fail_after(3):
            await handler.disconnected.wait()
        assert handler.disconnects == ["message larger than max_payload"]


async def test_events_handled_in_order_over_pipelined_websocket() -> None:
    async with serve() as (port, handler, _):
        async with trio_websocket.open_websocket_url(
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
        ) as ws:
            await ws.get_message()
            await ws.send_message("40")
            await ws.get_message()
            for i in range(40):  # every fifth handler takes a while: later events must still wait
                name = "slow" if i % 5 == 0 else "echo"
                await ws.send_message(f'42{i}["{name}",{i}]')
            acks = [await ws.get_message() for _ in range(40)]
        assert acks == [f"43{i}[{i}]" for i in range(40)]
        assert [args[0] for _, args in handler.events] == list(range(40))


class Refused(Exception):
    """connect_error as python-socketio's handler saw it."""


def _sync_client(port: int, *, transports: list[str], auth: Any = None) -> socketio.Client:
    client = socketio.Client(reconnection=False)
    refusals: list[Any] = []
    client.on("connect_error", lambda data: refusals.append(data))
    try:
        client.connect(f"http://127.0.0.1:{port}", transports=transports, auth=auth, wait_timeout=5)
    except socketio.exceptions.ConnectionError:
        raise Refused(refusals[0]["message"] if refusals else "no connect_error") from None
    return client


@pytest.mark.parametrize("transports", [["polling", "websocket"], ["websocket"], ["polling"]])
async def test_python_socketio_client(transports: list[str]) -> None:
    async with serve() as (port, handler, _):

        def run() -> dict[str, Any]:
            pushed: list[Any] = []
            client = socketio.Client(reconnection=False)
            client.on("pushed", lambda *args: pushed.append(args))
            client.connect(f"http://127.0.0.1:{port}", transports=transports, wait_timeout=5)
            out = {
                "echo": client.call("echo", {"n": [1, 2.5, None, "中文"]}, timeout=5),
                "binary": client.call("echo", b"\x00\xff" * 1000, timeout=5),
                "push": client.call("push", ({"k": 1}, b"\x01"), timeout=5),
            }
            client.sleep(0.5)
            out["transport"] = client.transport()
            out["pushed"] = pushed
            client.disconnect()
            return out

        out = await trio.to_thread.run_sync(run)
        assert out["echo"] == {"n": [1, 2.5, None, "中文"]}
        assert out["binary"] == b"\x00\xff" * 1000
        assert out["push"] == ({"k": 1}, b"\x01")
        assert out["pushed"] == [({"k": 1}, b"\x01")]
        assert out["transport"] == transports[-1]
        with trio.fail_after(5):
            await handler.disconnected.wait()


async def test_second_client_refused_and_token() -> None:
    async with serve(max_clients=1, auth_token="s3cret") as (port, handler, _):

        def run() -> list[str]:
            errors = []
            for auth in (None, {"token": "wrong"}):
                try:
                    _sync_client(port, transports=["websocket"], auth=auth)
                except Refused as exc:
                    errors.append(str(exc))
            first = _sync_client(port, transports=["polling", "websocket"], auth={"token": "s3cret"})
            try:
                _sync_client(port, transports=["websocket"], auth={"token": "s3cret"})
            except Refused as exc:
                errors.append(str(exc))
            first.disconnect()
            return errors

        errors = await trio.to_thread.run_sync(run)
        assert len(errors) == 3
        assert "invalid or missing auth token" in errors[0] and "invalid or missing auth token" in errors[1]
        assert "only one client at a time" in errors[2]
        assert handler.connects == [{"token": "s3cret"}]


async def test_handler_refusal_reaches_client() -> None:
    handler = Recorder()
    handler.refuse = "robot is charging"
    async with serve(handler) as (port, _, _):

        def run() -> str:
            try:
                _sync_client(port, transports=["websocket"])
            except Refused as exc:
                return str(exc)
            return "connected"

        assert "robot is charging" in await trio.to_thread.run_sync(run)


_REQUEST_LINES = st.sampled_from(
    [
        b"GET /socket.io/?EIO=4&transport=polling",
        b"POST /socket.io/?EIO=4&transport=polling&sid=x",
        b"GET /socket.io/?EIO=4&transport=websocket",
        b"OPTIONS /socket.io/",
        b"GET /",
    ]
)
_HTTPISH = st.builds(
    lambda line, version, headers, body: line + version + b"\r\n" + headers + b"\r\n\r\n" + body,
    _REQUEST_LINES,
    st.sampled_from([b" HTTP/1.1", b" HTTP/1.0", b" HTTP/9", b""]),
    st.binary(max_size=200),
    st.binary(max_size=200),
)


@settings(max_examples=40, deadline=None)
@given(garbage=st.one_of(st.binary(min_size=1, max_size=400), _HTTPISH))
async def test_http_garbage_never_breaks_the_server(garbage: bytes) -> None:
    async with serve() as (port, _, _server):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            await stream.send_all(garbage)
            with trio.move_on_after(0.3):
                while await stream.receive_some(65536):
                    pass
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()
        async with httpx.AsyncClient() as http:
            await handshake(http, port)  # still serving


@pytest.mark.parametrize(
    "headers",
    [
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n",  # no key, no version
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 8\r\n",
    ],
)
async def test_bad_websocket_handshakes(headers: bytes, caplog: pytest.LogCaptureFixture) -> None:
    async with serve() as (port, _, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        answer = b""
        with trio.move_on_after(2):
            while chunk := await stream.receive_some(65536):
                answer += chunk
        await stream.aclose()
        assert answer.startswith(b"HTTP/1.1 4"), answer[:80]
        async with httpx.AsyncClient() as http:
            await handshake(http, port)
    assert "HTTP connection failed" not in caplog.text


async def test_disconnect_frees_the_slot_while_a_handler_is_busy() -> None:
    release = trio.Event()

    class Busy(Recorder):
        async def on_event(self, client: SocketIOClient, name: str, args: list[Any]) -> Any:
            if name == "block":
                await release.wait()
            return await super().on_event(client, name, args)

    handler = Busy()
    async with serve(handler, max_clients=1) as (port, _, server):
        async with trio_websocket.open_websocket_url(
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
        ) as ws:
            await ws.get_message()
            await ws.send_message("40")
            await ws.get_message()
            await ws.send_message('421["block"]')
            await trio.sleep(0.1)
        with trio.fail_after(5):
            await handler.disconnected.wait()  # while "block" is still running
        assert handler.disconnects == ["transport close"] and not server.clients

        def reconnect() -> Any:
            client = _sync_client(port, transports=["websocket"])
            result = client.call("echo", "back", timeout=5)
            client.disconnect()
            return result

        assert await trio.to_thread.run_sync(reconnect) == "back"
        release.set()
