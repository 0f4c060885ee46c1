"""The adapter's and the bridges' fast paths give what the general ones give.

Frames read through ``zmq.Frame.more`` equal pyzmq's own ``recv_multipart``;
``try_recv_multipart`` / ``recv_multipart_burst`` drain without exceptions or
scheduler passes and still wait, stop and cancel like ``recv_multipart``; the
bridge's envelope handling answers every REQ shape byte for byte.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
import zmq

from switchyard.transports.zmq import ReceiveStopped, SocketOptions, open_socket
from switchyard.transports.zmq_bridges import EndpointConfig, ReqRepServer, current_identity

MESSAGES: list[list[bytes]] = [
    [b"one"],
    [b"", b"after an empty frame"],
    [b"a", b"", b"c"],
    [b"", b""],
    [b"x" * 100_000, b"tail"],
    [b"1", b"2", b"3", b"4", b"5"],
]


@pytest.mark.parametrize("receiver_type", ["ROUTER", "DEALER"])
@pytest.mark.parametrize("copy", [True, False])
async def test_frames_equal_pyzmqs_recv_multipart(receiver_type: str, copy: bool) -> None:
    """Same frames as a plain pyzmq socket reads, ROUTER (routing id first) or not, bytes or zmq.Frame."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    async with open_socket(receiver_type, bind="tcp://127.0.0.1:*") as ours:
        plain = ctx.socket(zmq.ROUTER if receiver_type == "ROUTER" else zmq.DEALER)
        plain.setsockopt(zmq.LINGER, 0)
        plain.bind("tcp://127.0.0.1:*")
        peers = []
        try:
            for endpoint in (ours.endpoints[0], plain.getsockopt_string(zmq.LAST_ENDPOINT)):
                peer = ctx.socket(zmq.DEALER)
                peer.setsockopt(zmq.LINGER, 0)
                peer.setsockopt(zmq.IDENTITY, b"peer-id")
                peer.connect(endpoint)
                peers.append(peer)
                for message in MESSAGES:
                    peer.send_multipart(message)
            for _ in MESSAGES:
                with trio.fail_after(5):
                    got = await ours.recv_multipart(copy=copy)
                assert plain.poll(5000)
                expected = plain.recv_multipart()
                if copy:
                    assert all(type(f) is bytes for f in got)
                    assert got == expected
                else:
                    assert all(isinstance(f, zmq.Frame) for f in got)
                    assert [f.bytes for f in got] == expected
        finally:
            for peer in peers:
                peer.close()
            plain.close()


async def test_try_recv_multipart_returns_none_instead_of_raising() -> None:
    async with open_socket(zmq.ROUTER, bind="tcp://127.0.0.1:*") as router:
        async with open_socket(zmq.DEALER, connect=router.endpoints[0], options=SocketOptions(identity=b"d")) as dealer:
            assert router.try_recv_multipart() is None
            with pytest.raises(trio.WouldBlock):
                router.recv_multipart_nowait()
            await dealer.send_multipart([b"", b"hello"])
            with trio.fail_after(5):
                while (frames := router.try_recv_multipart()) is None:
                    await trio.sleep(0.001)
            assert frames == [b"d", b"", b"hello"]
            assert router.try_recv_multipart() is None
            await dealer.send(b"queued")
            await trio.sleep(0.05)
            router.stop_receiving()
            assert router.try_recv_multipart() is None  # stopped: nothing more is read


async def test_recv_multipart_burst_takes_queued_messages_without_a_scheduler_pass() -> None:
    async with open_socket(zmq.ROUTER, bind="tcp://127.0.0.1:*") as router:
        async with open_socket(zmq.DEALER, connect=router.endpoints[0], options=SocketOptions(identity=b"d")) as dealer:
            for i in range(3):
                await dealer.send(b"%d" % i)
            with trio.fail_after(5):
                while not router.socket.poll(0):
                    await trio.sleep(0.001)
            await trio.sleep(0.05)  # all three are in by now
            ran: list[int] = []

            async def other() -> None:
                ran.append(1)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(other)
                got = [await router.recv_multipart_burst() for _ in range(3)]
                assert ran == []  # no checkpoint was taken while messages were queued
                assert got == [[b"d", b"%d" % i] for i in range(3)]

                async def later() -> None:
                    await trio.sleep(0.05)
                    await dealer.send(b"late")

                nursery.start_soon(later)
                with trio.fail_after(5):
                    assert await router.recv_multipart_burst() == [b"d", b"late"]  # waited
                assert ran == [1]


async def test_recv_multipart_burst_waits_cancellably_and_stops() -> None:
    async with open_socket(zmq.ROUTER, bind="tcp://127.0.0.1:*") as router:
        with trio.move_on_after(0.05) as scope:
            await router.recv_multipart_burst()
        assert scope.cancelled_caught
        with trio.CancelScope() as cancelled:
            cancelled.cancel()
            await router.recv_multipart_burst()  # nothing queued: the wait raises Cancelled
            pytest.fail("not cancelled")  # pragma: no cover

        async def receiver() -> None:
            with pytest.raises(ReceiveStopped):
                await router.recv_multipart_burst()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            router.stop_receiving()
        with pytest.raises(ReceiveStopped):
            await router.recv_multipart_burst()


async def test_burst_receive_behind_a_receiver_that_holds_the_turn() -> None:
    """With another task already receiving, the burst receive queues behind it (one receiver at a time)."""
    async with open_socket(zmq.DEALER, bind="tcp://127.0.0.1:*") as a:
        async with open_socket(zmq.DEALER, connect=a.endpoints[0]) as b:
            got: list[bytes] = []

            async def plain() -> None:
                got.append((await a.recv_multipart())[0])

            async def burst() -> None:
                got.append((await a.recv_multipart_burst())[0])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(plain)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(burst)
                await trio.testing.wait_all_tasks_blocked()
                await b.send(b"first")
                await b.send(b"second")
            assert got == [b"first", b"second"]


@pytest.mark.parametrize("async_handler", [False, True])
async def test_bridge_answers_every_envelope_shape_byte_for_byte(async_handler: bool) -> None:
    """REQ, proxied REQ (two routing ids), DEALER in lockstep; replies as bytes, bytearray, frames."""

    def reply_for(body: bytes) -> object:
        assert current_identity() in (b"dealer", b"req")
        if body == b"frames":
            return [b"f1", bytearray(b"f2")]
        if body == b"bytearray":
            return bytearray(b"ba")
        return b"re:" + body

    async def async_reply(body: bytes) -> object:
        await trio.lowlevel.checkpoint()
        return reply_for(body)

    handler = async_reply if async_handler else reply_for
    server = ReqRepServer(
        EndpointConfig("tcp://127.0.0.1:*", request_timeout=5),
        handler,  # type: ignore[arg-type]
        error_reply=lambda exc, body: b"error",
        accept_dealer=True,
    )
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(server.serve)
        async with open_socket(zmq.DEALER, connect=endpoint, options=SocketOptions(identity=b"dealer")) as dealer:
            cases = [
                ([b"", b"x"], [b"", b"re:x"]),  # what a REQ peer sends
                ([b"hop", b"", b"y"], [b"hop", b"", b"re:y"]),  # one proxy hop in between
                ([b"z"], [b"re:z"]),  # a DEALER without a delimiter (accept_dealer)
                ([b"", b"frames"], [b"", b"f1", b"f2"]),
                ([b"", b"bytearray"], [b"", b"ba"]),
                ([b"", b"a", b"b"], [b"", b"error"]),  # two body frames on a single-frame server
            ]
            for request, expected in cases:
                await dealer.send_multipart(request)
                with trio.fail_after(5):
                    assert await dealer.recv_multipart() == expected
        async with open_socket(zmq.REQ, connect=endpoint, options=SocketOptions(identity=b"req")) as req:
            await req.send(b"plain")
            with trio.fail_after(5):
                assert await req.recv() == b"re:plain"
        assert server.stats["errors"] == 1
        await server.drain()
