"""Hypothesis against a live IPC server: chunked frames round-trip, garbage never hurts."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchyard.protocols.codec import json_codec, msgpack_codec
from switchyard.protocols.ipc import Kind, Message
from switchyard.protocols.ipc_framing import MessageReader, encode_frame
from switchyard.testing.ipc import chunked, read_messages, wire_values
from switchyard.transports.ipc.client import open_ipc_client
from switchyard.transports.ipc.server import SocketServer

CODECS = {"json": json_codec, "msgpack": msgpack_codec}
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def echo_server(path: str, **options: Any) -> SocketServer:
    server = SocketServer(path, max_frame_size=4096, **options)

    async def echo(data: Any) -> Any:
        await trio.sleep(0)  # blocks once: exercises the hand-off path too
        return data

    server.register_handler("echo", echo)
    server.register_handler("echo_sync", lambda data: data)
    return server


async def send_in_pieces(stream: trio.SocketStream, pieces: list[bytes]) -> None:
    for piece in pieces:
        if piece:
            await stream.send_all(piece)
        await trio.sleep(0.0005)  # give the server a chance to read each piece on its own


@SETTINGS
@given(
    codec_name=st.sampled_from(["json", "msgpack"]),
    data=st.data(),
)
def test_requests_round_trip_through_a_live_server_whatever_the_chunking(codec_name: str, data: st.DataObject) -> None:
    codec = CODECS[codec_name]
    payloads = data.draw(st.lists(wire_values(codec_name), min_size=1, max_size=5))
    methods = data.draw(
        st.lists(st.sampled_from(["echo", "echo_sync"]), min_size=len(payloads), max_size=len(payloads))
    )
    requests = [
        Message(Kind.REQUEST, f"r{i}", m, p, 1.0) for i, (m, p) in enumerate(zip(methods, payloads, strict=False))
    ]
    stream_bytes = b"".join(encode_frame(r, codec) for r in requests)
    pieces = data.draw(chunked(stream_bytes, max_chunks=12))

    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            async with echo_server(str(Path(tmp) / "f.sock")) as server:
                stream = await trio.open_unix_socket(str(server.bound_address.path))
                async with stream:
                    await send_in_pieces(stream, pieces)
                    replies = await read_messages(stream, MessageReader(codec=codec), len(requests))
        by_id = {reply.id: reply for reply in replies}
        assert all(reply.kind is Kind.RESPONSE for reply in replies)
        assert {r.id: r.data for r in requests} == {i: by_id[i].data for i in by_id}

    trio.run(main)


@SETTINGS
@given(
    pieces=st.lists(st.binary(max_size=300), min_size=1, max_size=8),
    codec_name=st.sampled_from(["json", "msgpack", None]),
)
def test_arbitrary_bytes_never_crash_a_live_server(pieces: list[bytes], codec_name: str | None) -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "g.sock")
            async with echo_server(path, max_bad_messages=1000):
                async with open_ipc_client(path, connect_timeout=2.0) as bystander:
                    assert await bystander.request("echo", "before") == "before"
                    stream = await trio.open_unix_socket(path)
                    async with stream:
                        if codec_name is not None:  # sometimes a valid first frame fixes the codec
                            codec = CODECS[codec_name]
                            await stream.send_all(encode_frame(Message.request("ok", "echo_sync", 1), codec))
                        try:
                            await send_in_pieces(stream, pieces)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass  # the server may hang up on an oversized header
                        # Whatever came back must be well-formed frames of valid messages.
                        reader = MessageReader()
                        with trio.move_on_after(0.2):
                            while True:
                                try:
                                    chunk = await stream.receive_some(65536)
                                except trio.BrokenResourceError:
                                    break
                                if not chunk:
                                    break
                                reader.receive_data(chunk)
                        while (message := reader.next_message()) is not None:
                            assert message.kind in (Kind.RESPONSE, Kind.ERROR, Kind.HEARTBEAT, Kind.PUSH)
                    assert await bystander.request("echo", "after") == "after"
                    assert (await bystander.server_health())["status"] == "ok"

    trio.run(main)
