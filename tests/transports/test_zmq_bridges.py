"""ROUTER bridges with real libzmq REQ and DEALER clients (pyzmq, blocking, in threads)."""

from __future__ import annotations

import json

import pytest
import trio
import zmq

from switchyard.transports.zmq import SocketOptions, open_socket
from switchyard.transports.zmq_bridges import (
    EndpointConfig,
    HandlerTimeout,
    MessageTooLarge,
    PeerGone,
    ReqRepServer,
    RouterStreamServer,
)


def _error_reply(exc: BaseException, body: object) -> bytes:
    return json.dumps({"error": type(exc).__name__, "detail": str(exc)}).encode()


async def _handler(body: bytes) -> bytes:
    request = json.loads(body)
    if request.get("sleep"):
        await trio.sleep(request["sleep"])
    if request.get("fail"):
        raise RuntimeError("handler failed")
    return json.dumps({"echo": request}).encode()


def _req_roundtrip(endpoint: str, payload: bytes | list[bytes], timeout_ms: int = 3000) -> bytes:
    """A blocking REQ client configured like the aipara C++ client (LINGER 0, timeouts)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
    sock.connect(endpoint)
    try:
        if isinstance(payload, list):
            sock.send_multipart(payload)
        else:
            sock.send(payload)
        return sock.recv()
    finally:
        sock.close()


async def _req(endpoint: str, payload: bytes | list[bytes], timeout_ms: int = 3000) -> bytes:
    return await trio.to_thread.run_sync(_req_roundtrip, endpoint, payload, timeout_ms)


async def test_slow_request_does_not_hold_up_others() -> None:
    server = ReqRepServer(EndpointConfig("tcp://127.0.0.1:*"), _handler, error_reply=_error_reply)
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(server.serve)
        fast_done_at: list[float] = []
        slow_done_at: list[float] = []

        async def slow() -> None:
            await _req(endpoint, json.dumps({"sleep": 0.5}).encode())
            slow_done_at.append(trio.current_time())

        async def fast(i: int) -> None:
            reply = json.loads(await _req(endpoint, json.dumps({"i": i}).encode()))
            assert reply == {"echo": {"i": i}}
            fast_done_at.append(trio.current_time())

        async with trio.open_nursery() as clients:
            clients.start_soon(slow)
            await trio.sleep(0.05)
            for i in range(5):
                clients.start_soon(fast, i)
        assert len(fast_done_at) == 5 and max(fast_done_at) < slow_done_at[0]
        await server.drain()


async def test_every_failure_still_gets_exactly_one_reply() -> None:
    config = EndpointConfig("tcp://127.0.0.1:*", max_message_size=1000, request_timeout=0.2)
    server = ReqRepServer(config, _handler, error_reply=_error_reply)
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(server.serve)
        cases = [
            (json.dumps({"fail": True}).encode(), "RuntimeError"),
            (b"not json", "JSONDecodeError"),
            (json.dumps({"sleep": 5}).encode(), HandlerTimeout.__name__),
            (b"x" * 5000, MessageTooLarge.__name__),
            ([b"two", b"frames"], "MalformedEnvelope"),
        ]
        for payload, expected in cases:
            reply = json.loads(await _req(endpoint, payload))
            assert reply["error"] == expected, reply
        assert json.loads(await _req(endpoint, b"{}")) == {"echo": {}}
        assert server.stats["errors"] == 5
        await server.drain()


async def test_error_reply_that_raises_still_answers() -> None:
    def broken_error_reply(exc: BaseException, body: object) -> bytes:
        raise ValueError("oops")

    server = ReqRepServer(EndpointConfig("tcp://127.0.0.1:*"), _handler, error_reply=broken_error_reply)
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(server.serve)
        reply = await _req(endpoint, json.dumps({"fail": True}).encode())
        assert reply.startswith(b"error: RuntimeError")
        await server.drain()


async def test_drain_lets_in_flight_requests_finish() -> None:
    server = ReqRepServer(EndpointConfig("tcp://127.0.0.1:*"), _handler, error_reply=_error_reply)
    replies: list[bytes] = []
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(server.serve)

        async def client() -> None:
            replies.append(await _req(endpoint, json.dumps({"sleep": 0.2}).encode()))

        nursery.start_soon(client)
        await trio.sleep(0.1)
        await server.drain()
    assert replies and json.loads(replies[0]) == {"echo": {"sleep": 0.2}}


async def test_multipart_server_gets_zero_copy_frames() -> None:
    async def handler(frames: list[zmq.Frame]) -> list[bytes]:
        return [frames[0].bytes, b"%d" % len(frames[1].buffer)]

    server = ReqRepServer(EndpointConfig("tcp://127.0.0.1:*"), handler, error_reply=_error_reply, multipart=True)
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(server.serve)

        def client() -> list[bytes]:
            sock = zmq.Context.instance().socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            sock.send_multipart([b"hdr", b"\0" * 12345])
            out = sock.recv_multipart()
            sock.close()
            return out

        assert await trio.to_thread.run_sync(client) == [b"hdr", b"12345"]
        await server.drain()


async def _dealer(endpoint: str, identity: bytes):  # type: ignore[no-untyped-def]
    return open_socket(zmq.DEALER, connect=endpoint, options=SocketOptions(identity=identity))


async def test_stream_server_streams_and_supersedes() -> None:
    started: list[bytes] = []

    async def handler(identity: bytes, body: bytes, send) -> None:  # type: ignore[no-untyped-def]
        started.append(body)
        count = int(body.split(b":")[1])
        for i in range(count):
            await send(b"%s#%d" % (body, i))
            await trio.sleep(0.01)
        await send(b"%s#final" % body)

    server = RouterStreamServer(EndpointConfig("tcp://127.0.0.1:*"), handler, supersede=True)
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(server.serve)
        async with open_socket(zmq.DEALER, connect=endpoint, options=SocketOptions(identity=b"ime")) as dealer:
            await dealer.send(b"a:3")
            assert [await dealer.recv() for _ in range(4)] == [b"a:3#0", b"a:3#1", b"a:3#2", b"a:3#final"]
            # a long stream, superseded after its first reply
            await dealer.send(b"b:1000")
            assert await dealer.recv() == b"b:1000#0"
            await dealer.send(b"c:1")
            got = []
            with trio.fail_after(3):
                while True:
                    msg = await dealer.recv()
                    got.append(msg)
                    if msg == b"c:1#final":
                        break
            tail = got[got.index(b"c:1#0") :]
            assert tail == [b"c:1#0", b"c:1#final"]
            assert all(m.startswith(b"b:") for m in got[: got.index(b"c:1#0")])
            assert len(got) <= 4  # at most a reply or two of b slipped out before c arrived
            await trio.sleep(0.1)
            with trio.move_on_after(0.1):
                extra = await dealer.recv()
                pytest.fail(f"superseded stream sent {extra!r}")
        await server.drain()


async def test_stream_to_vanished_peer_raises_peer_gone_and_server_goes_on() -> None:
    outcome: list[str] = []

    async def handler(identity: bytes, body: bytes, send) -> None:  # type: ignore[no-untyped-def]
        if body == b"late":
            await trio.sleep(0.3)
            try:
                await send(b"too late")
            except PeerGone:
                outcome.append("peer gone")
                raise
        await send(b"ok:" + body)

    server = RouterStreamServer(EndpointConfig("tcp://127.0.0.1:*"), handler)
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(server.serve)
        async with open_socket(zmq.DEALER, connect=endpoint, options=SocketOptions(identity=b"gone")) as dealer:
            await dealer.send(b"late")
            await trio.sleep(0.05)
        await trio.sleep(0.5)
        assert outcome == ["peer gone"]
        async with open_socket(zmq.DEALER, connect=endpoint, options=SocketOptions(identity=b"new")) as dealer:
            await dealer.send(b"x")
            with trio.fail_after(2):
                assert await dealer.recv() == b"ok:x"
        await server.drain()


async def test_stream_handler_error_gets_error_reply() -> None:
    async def handler(identity: bytes, body: bytes, send) -> None:  # type: ignore[no-untyped-def]
        raise KeyError("nope")

    server = RouterStreamServer(EndpointConfig("tcp://127.0.0.1:*"), handler, error_reply=_error_reply)
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(server.serve)
        async with open_socket(zmq.DEALER, connect=endpoint) as dealer:
            await dealer.send(b"x")
            with trio.fail_after(2):
                assert json.loads(await dealer.recv())["error"] == "KeyError"
        await server.drain()


async def test_handlers_see_the_client_identity_and_dealers_can_be_accepted() -> None:
    from switchyard.transports.zmq_bridges import current_identity

    async def handler(body: bytes) -> bytes:
        return current_identity() + b"|" + body

    def error_reply(exc: BaseException, body: object) -> bytes:
        return b"error for " + current_identity()

    server = ReqRepServer(
        EndpointConfig("tcp://127.0.0.1:*", max_message_size=10), handler, error_reply=error_reply, accept_dealer=True
    )
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(server.serve)
        async with open_socket(zmq.DEALER, connect=endpoint, options=SocketOptions(identity=b"dealer-7")) as dealer:
            await dealer.send(b"hi")  # no empty delimiter
            with trio.fail_after(2):
                assert await dealer.recv() == b"dealer-7|hi"
            await dealer.send(b"x" * 50)
            with trio.fail_after(2):
                assert await dealer.recv() == b"error for dealer-7"
        async with open_socket(zmq.REQ, connect=endpoint, options=SocketOptions(identity=b"req-1")) as req:
            await req.send(b"yo")
            with trio.fail_after(2):
                assert await req.recv() == b"req-1|yo"
        await server.drain()


@pytest.mark.parametrize("max_concurrent", [1, 4, 64])
async def test_inline_and_handed_off_handlers_mixed(max_concurrent: int) -> None:
    """Handlers that never block, block once, hold their own cancel scopes across a
    block, or fail after blocking: every client gets its own answer, and drain ends."""

    async def handler(body: bytes) -> bytes:
        kind, _, tag = body.partition(b":")
        if kind == b"inline":
            return b"inline:" + tag
        if kind == b"scoped":
            with trio.move_on_after(5):
                await trio.sleep(0.01)
                with trio.CancelScope():
                    await trio.sleep(0)
            return b"scoped:" + tag
        if kind == b"fail":
            await trio.sleep(0.005)
            raise RuntimeError(tag.decode())
        await trio.sleep(0.02)
        return b"slow:" + tag

    def error_reply(exc: BaseException, body: object) -> bytes:
        return b"error:" + str(exc).encode()

    server = ReqRepServer(
        EndpointConfig("tcp://127.0.0.1:*", max_concurrent=max_concurrent), handler, error_reply=error_reply
    )
    kinds = [b"inline", b"scoped", b"fail", b"slow"]
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(server.serve)
        results: dict[bytes, bytes] = {}

        async def client(i: int) -> None:
            kind = kinds[i % len(kinds)]
            async with open_socket(zmq.REQ, connect=endpoint) as req:
                for j in range(3):
                    tag = b"%d-%d" % (i, j)
                    await req.send(kind + b":" + tag)
                    results[tag] = await req.recv()

        with trio.fail_after(20):
            async with trio.open_nursery() as clients:
                for i in range(24):
                    clients.start_soon(client, i)
            await server.drain()
    assert len(results) == 72
    for tag, reply in results.items():
        i = int(tag.split(b"-")[0])
        kind = kinds[i % len(kinds)]
        expected = b"error:" + tag if kind == b"fail" else kind + b":" + tag
        assert reply == expected


async def test_a_long_burst_of_queued_requests_is_served_whole() -> None:
    """More requests queued at once than the reader serves between two yields: none is lost."""
    import time

    async def handler(body: bytes) -> bytes:
        if body == b"stall":
            time.sleep(0.3)  # hold the whole Trio thread while the burst piles up in the socket
        return b"re:" + body

    server = ReqRepServer(EndpointConfig("tcp://127.0.0.1:*"), handler, error_reply=_error_reply, accept_dealer=True)
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(server.serve)

        def client() -> set[bytes]:
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 5000)
            sock.connect(endpoint)
            sock.send(b"hello")
            assert sock.recv() == b"re:hello"
            sock.send(b"stall")
            time.sleep(0.05)  # the server is now stalled in the handler
            for i in range(500):
                sock.send(b"%d" % i)
            replies = {sock.recv() for _ in range(501)}
            sock.close()
            return replies

        replies = await trio.to_thread.run_sync(client)
        assert replies == {b"re:stall"} | {b"re:%d" % i for i in range(500)}
        await server.drain()
