"""websocket_server's own frame parsing and framing give what wsproto gives, and hand over to it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Pong, Request, TextMessage
from wsproto.frame_protocol import Opcode

from switchyard.transports.websocket_server import FastLock, WebSocketClosed, WebSocketConnection, _frames, handshake


def client_frame(message: str | bytes, mask: bytes = b"\0\0\0\0") -> bytes:
    """A masked client frame with the given key, built by hand."""
    payload = message.encode() if isinstance(message, str) else message
    first = 0x81 if isinstance(message, str) else 0x82
    n = len(payload)
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65536:
        head = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


@asynccontextmanager
async def pair(
    max_message_size: int = 1 << 20,
) -> AsyncIterator[tuple[WebSocketConnection, trio.abc.Stream, WSConnection]]:
    """A server connection over an in-memory stream, and the client's stream and wsproto."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = WSConnection(ConnectionType.CLIENT)
    await client_stream.send_all(client.send(Request(host="x", target="/")))
    pending = await handshake(server_stream, max_message_size=max_message_size)
    ws = await pending.accept()
    client.receive_data(bytes(await client_stream.receive_some(65536)))
    assert isinstance(next(client.events()), AcceptConnection)
    yield ws, client_stream, client


async def receive_all(ws: WebSocketConnection, count: int) -> list[str | bytes]:
    got: list[str | bytes] = []
    with trio.fail_after(5):
        while len(got) < count:
            got += await ws.receive_messages()
    return got


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_server_frames_are_the_bytes_wsproto_writes(size: int) -> None:
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(WSConnection(ConnectionType.CLIENT).send(Request(host="x", target="/")))
    next(ws.events())
    ws.send(AcceptConnection())
    text, blob = ("é" * size)[:size], os.urandom(size)
    expected = ws.send(TextMessage(data=text)) + ws.send(BytesMessage(data=blob))
    assert _frames([text, blob]) == expected


messages = st.lists(
    st.one_of(
        st.text(max_size=300),
        st.binary(max_size=300),
        st.sampled_from(["x" * 70000, b"\x00" * 126]),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.lists(st.integers(1, 5000), max_size=6), st.booleans(), st.integers(0, 8))
async def test_split_frames_arrive_whole_and_in_order(
    sent: list[str | bytes], cuts: list[int], random_masks: bool, ping_at: int
) -> None:
    frames = [client_frame(m, os.urandom(4) if random_masks else b"\0\0\0\0") for m in sent]
    ping = ping_at < len(frames)
    if ping:  # a control frame in the middle: wsproto reads from there on
        frames.insert(ping_at, bytes((0x80 | Opcode.PING, 0x82)) + b"\1\2\3\4" + bytes((ord("h") ^ 1, ord("i") ^ 2)))
    data = b"".join(frames)
    async with pair() as (ws, client_stream, client):
        pos = 0
        for cut in [*cuts, len(data)]:
            await client_stream.send_all(data[pos : pos + cut])
            pos += cut
            if pos >= len(data):
                break
        assert await receive_all(ws, len(sent)) == sent
        if ping:
            client.receive_data(bytes(await client_stream.receive_some(65536)))
            assert any(isinstance(e, Pong) and e.payload == b"hi" for e in client.events())


async def test_a_big_frame_over_many_reads_and_then_small_ones() -> None:
    blob = os.urandom(300_000)
    data = client_frame(blob, b"\x01\x02\x03\x04") + client_frame("after")
    async with pair() as (ws, client_stream, _):
        for i in range(0, len(data), 1000):
            await client_stream.send_all(data[i : i + 1000])
        assert await receive_all(ws, 2) == [blob, "after"]


async def test_wsproto_takes_over_for_fragments_and_close() -> None:
    async with pair() as (ws, client_stream, client):
        data = client_frame("one") + client.send(TextMessage(data="ab", message_finished=False))
        data += client.send(TextMessage(data="cd")) + client_frame("two")
        await client_stream.send_all(data)
        assert await receive_all(ws, 3) == ["one", "abcd", "two"]
        await client_stream.send_all(client.send(CloseConnection(code=1000)))
        with pytest.raises(WebSocketClosed) as closed:
            await ws.receive_messages()
        assert closed.value.code == 1000


async def test_bad_utf8_after_good_frames_closes_1007() -> None:
    async with pair() as (ws, client_stream, _):
        await client_stream.send_all(client_frame("fine") + bytes((0x81, 0x81)) + b"\0\0\0\0" + b"\xff")
        with pytest.raises(WebSocketClosed) as closed:
            await receive_all(ws, 2)
        assert closed.value.code == 1007


@pytest.mark.parametrize("cut", [0, 100], ids=["between-frames", "mid-frame"])
async def test_end_of_stream_is_1006(cut: int) -> None:
    """A peer gone without a close frame: WebSocketClosed(1006), no close reply attempted."""
    async with pair() as (ws, client_stream, _):
        if cut:
            await client_stream.send_all(client_frame("x" * 500)[:cut])
        await client_stream.aclose()
        with pytest.raises(WebSocketClosed) as closed:
            await receive_all(ws, 1)
        assert closed.value.code == 1006


async def test_send_messages_times_out_when_the_peer_reads_nothing() -> None:
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    client = WSConnection(ConnectionType.CLIENT)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_stream.send_all, client.send(Request(host="x", target="/")))
        pending = await handshake(server_stream, max_message_size=1000)
        nursery.start_soon(client_stream.receive_some, 65536)
        ws = await pending.accept()
    assert await ws.send_messages(["nobody reads this"], 0.05) is False


async def test_fast_lock_serialises_and_a_free_one_does_not_checkpoint() -> None:
    lock, order = FastLock(), []

    async def user(name: str) -> None:
        async with lock:
            order.append(f"{name} in")
            await trio.sleep(0.01)
            order.append(f"{name} out")

    async with trio.open_nursery() as nursery:
        for name in "abc":
            nursery.start_soon(user, name)
    assert [order[i][0] for i in range(0, 6, 2)] == [order[i][0] for i in range(1, 6, 2)]  # no overlap
    assert not lock.locked
    with trio.CancelScope() as scope:
        scope.cancel()
        async with lock:  # free: taken without a checkpoint, so the cancel does not fire here
            pass
    assert not scope.cancelled_caught
