"""switchyard.transports.websocket_server with a raw wsproto client on loopback."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio_websocket
from test_socketio_server import Recorder, serve
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Pong, Request, TextMessage
from wsproto.frame_protocol import Opcode

from switchyard.transports.websocket_server import WebSocketClosed, WebSocketConnection, handshake

Serve = Callable[[WebSocketConnection], Awaitable[None]]


@asynccontextmanager
async def server(serve: Serve, max_message_size: int = 1000) -> AsyncIterator[int]:
    async def on_connection(stream: trio.SocketStream) -> None:
        try:
            pending = await handshake(stream, max_message_size=max_message_size)
        except WebSocketClosed:
            await stream.aclose()
            return
        ws = await pending.accept()
        try:
            await serve(ws)
        finally:
            await ws.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, on_connection, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


class Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> Client:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await client.stream.send_all(client.ws.send(Request(host="127.0.0.1", target="/")))
        assert isinstance(await client.event(), AcceptConnection)
        return client

    async def event(self) -> object:
        while True:
            for event in self.ws.events():
                return event
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data or None)


async def test_batches_fragments_and_pings() -> None:
    got: list[list[str | bytes]] = []

    async def serve(ws: WebSocketConnection) -> None:
        while True:
            batch = await ws.receive_messages()
            got.append(batch)
            await ws.send_messages([m.upper() if isinstance(m, str) else m for m in batch])

    async with server(serve) as port:
        client = await Client.connect(port)
        ws = client.ws
        data = ws.send(TextMessage(data="ab", message_finished=False)) + ws.send(TextMessage(data="cd"))
        data += ws.send(TextMessage(data="x")) + ws.send(TextMessage(data="y"))
        await client.stream.send_all(data)
        replies = [await client.event() for _ in range(3)]
        assert [r.data for r in replies if isinstance(r, TextMessage)] == ["ABCD", "X", "Y"]
        assert got == [["abcd", "x", "y"]]  # one read, one batch
        await client.stream.send_all(ws.send(Ping(payload=b"hi")))
        pong = await client.event()
        assert isinstance(pong, Pong) and pong.payload == b"hi"
        await client.stream.aclose()


@pytest.mark.parametrize("fragmented", [False, True])
async def test_message_over_the_limit_closes_1009(fragmented: bool) -> None:
    closed: list[WebSocketClosed] = []

    async def serve(ws: WebSocketConnection) -> None:
        try:
            await ws.receive_messages()
        except WebSocketClosed as exc:
            closed.append(exc)

    async with server(serve, max_message_size=100) as port:
        client = await Client.connect(port)
        if fragmented:  # each fragment is small, the message is not
            data = b"".join(client.ws.send(TextMessage(data="x" * 60, message_finished=False)) for _ in range(50))
        else:
            data = client.ws.send(TextMessage(data="x" * 101))
        try:
            await client.stream.send_all(data)
        except trio.BrokenResourceError:
            pass
        with trio.fail_after(5):
            event = await client.event()
        assert isinstance(event, CloseConnection) and event.code == 1009
        assert closed and closed[0].code == 1009


async def test_bad_utf8_closes_1007_and_bad_handshake_gets_400() -> None:
    closed: list[WebSocketClosed] = []

    async def serve(ws: WebSocketConnection) -> None:
        try:
            await ws.receive_messages()
        except WebSocketClosed as exc:
            closed.append(exc)

    async with server(serve) as port:
        client = await Client.connect(port)
        # a masked text frame carrying invalid UTF-8 (0xff), written by hand
        await client.stream.send_all(bytes([0x80 | Opcode.TEXT, 0x80 | 1]) + b"\0\0\0\0" + b"\xff")
        with trio.fail_after(5):
            event = await client.event()
        assert isinstance(event, CloseConnection) and event.code == 1007
        assert closed[0].code == 1007

        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        answer = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
        await stream.aclose()


async def test_heartbeat_goes_on_while_an_inline_handler_blocks() -> None:
    """A handler that blocks longer than ping_interval + ping_timeout hands reading to
    another task: pongs are still read, the session survives, later events wait."""

    class Sleepy(Recorder):
        async def on_event(self, client: Any, name: str, args: list[Any]) -> Any:
            if name == "nap":
                await trio.sleep(1.0)
            return await super().on_event(client, name, args)

    handler = Sleepy()
    async with serve(handler, ping_interval=0.2, ping_timeout=0.3) as (port, _, _server):
        async with trio_websocket.open_websocket_url(
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
        ) as ws:
            await ws.get_message()
            await ws.send_message("40")
            await ws.get_message()
            await ws.send_message('421["nap"]')
            await ws.send_message('422["echo","after"]')
            acks, pings = [], 0
            with trio.fail_after(5):
                while len(acks) < 2:
                    message = await ws.get_message()
                    if message == "2":
                        pings += 1
                        await ws.send_message("3")
                    else:
                        acks.append(message)
        assert acks == ["431[]", '432["after"]'] and pings >= 3
        assert not any("ping" in reason for reason in handler.disconnects)
