"""Clients that never read: server memory stays bounded and other clients are unaffected."""

from __future__ import annotations

import resource

import trio
import zmq

from switchyard.transports.zmq_bridges import EndpointConfig, PeerStuck, ReqRepServer, RouterStreamServer

CHUNK = b"x" * 4096


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_stream_to_a_never_reading_dealer_is_cut_and_others_keep_their_replies() -> None:
    outcome: dict[bytes, object] = {}
    sent: dict[bytes, int] = {}

    async def handler(identity: bytes, body: bytes, send) -> None:  # type: ignore[no-untyped-def]
        count = 20_000 if body == b"flood" else 3
        sent[identity] = 0
        try:
            for _ in range(count):
                await send(CHUNK)
                sent[identity] += 1
            outcome[identity] = "done"
        except PeerStuck as exc:
            outcome[identity] = exc
            raise

    config = EndpointConfig("tcp://127.0.0.1:*", sndhwm=100, send_timeout=0.5)
    server = RouterStreamServer(config, handler, supersede=False)
    ctx = zmq.Context.instance()
    before = _rss_mib()
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(server.serve)
        hog = ctx.socket(zmq.DEALER)
        hog.setsockopt(zmq.IDENTITY, b"hog")
        hog.setsockopt(zmq.RCVHWM, 100)
        hog.setsockopt(zmq.RCVBUF, 64 * 1024)
        hog.setsockopt(zmq.LINGER, 0)
        hog.connect(endpoint)
        friend = ctx.socket(zmq.DEALER)
        friend.setsockopt(zmq.IDENTITY, b"friend")
        friend.setsockopt(zmq.LINGER, 0)
        friend.connect(endpoint)
        try:
            hog.send(b"flood")  # and never reads
            await trio.sleep(0.2)
            # While the hog's queue is full, a friend's request is answered at once.
            started = trio.current_time()
            friend.send(b"hello")
            got = []
            with trio.fail_after(3):
                while len(got) < 3:
                    if friend.poll(0):
                        got.append(friend.recv())
                    else:
                        await trio.sleep(0.005)
            assert trio.current_time() - started < 0.5
            with trio.fail_after(5):
                while b"hog" not in outcome:
                    await trio.sleep(0.05)
        finally:
            hog.close()
            friend.close()
            await server.drain()
    assert isinstance(outcome[b"hog"], PeerStuck)
    assert outcome[b"friend"] == "done"
    # Bounded by SNDHWM + the peer's RCVHWM + kernel buffers, far below the 20,000 asked for.
    assert sent[b"hog"] < 5_000, sent
    assert server.stats["send_timeouts"] == 1
    assert _rss_mib() - before < 100


async def test_dealer_pipelining_tasks_and_never_reading_gets_replies_dropped_not_queued() -> None:
    async def handler(body: bytes) -> bytes:
        return CHUNK

    config = EndpointConfig("tcp://127.0.0.1:*", sndhwm=50, send_timeout=0.2, max_concurrent=64)
    server = ReqRepServer(config, handler, error_reply=lambda exc, body: b"error")
    ctx = zmq.Context.instance()
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(server.serve)
        hog = ctx.socket(zmq.DEALER)
        hog.setsockopt(zmq.RCVHWM, 50)
        hog.setsockopt(zmq.RCVBUF, 64 * 1024)
        hog.setsockopt(zmq.SNDHWM, 0)
        hog.setsockopt(zmq.LINGER, 0)
        hog.connect(endpoint)
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(endpoint)
        try:
            for _ in range(3000):
                hog.send_multipart([b"", b"task"])
            with trio.fail_after(20):
                while server.stats["requests"] < 3000:
                    await trio.sleep(0.05)
            req.send(b"ping")
            with trio.fail_after(3):
                while not req.poll(0):
                    await trio.sleep(0.005)
            assert req.recv() == CHUNK
        finally:
            hog.close()
            req.close()
            await server.drain()
    assert server.stats["send_timeouts"] > 0
