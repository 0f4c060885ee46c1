"""Core runtime and ZeroMQ benchmarks.

1. ``tell`` throughput and ``ask`` round trips vs a raw Trio memory channel doing
   the same work (goal: 0.8x and 0.7x).
2. REQ echo round trips from a blocking pyzmq REQ client (its own process) against:
   the ROUTER bridge + an actor (switchyard), a bare ``zmq.asyncio`` REP echo, a
   blocking pyzmq REP echo, and the same ROUTER echo on zmq-anyio's Trio backend
   (goal: switchyard >= 1.0x zmq.asyncio).

Run: ``python -m bench.bench_core`` (part of ``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing.synchronize
import os
import sys
import time

import trio
import zmq

from bench._harness import server_process
from bench._stats import fmt, median, p99, ratio, section, table
from switchyard.runtime import Actor, open_system

RUNS = 5
TELLS = 50_000
ASKS = 10_000
ECHOES = 5_000


# -- in-process: actors vs raw channels ---------------------------------------------
class Counter(Actor):
    mailbox_capacity = 256

    async def on_start(self) -> None:
        self.count = 0

    async def handle(self, message: object) -> object:
        self.count += 1
        return message


async def _raw_tell() -> float:
    send, receive = trio.open_memory_channel[object](256)
    done = trio.Event()

    async def consumer() -> None:
        count = 0
        async for _ in receive:
            count += 1
            if count == TELLS:
                done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        start = time.perf_counter()
        for i in range(TELLS):
            await send.send(i)
        await done.wait()
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return TELLS / elapsed


async def _actor_tell() -> float:
    async with open_system("bench", grace_period=5) as system:
        ref = await system.spawn(Counter, name="counter")
        start = time.perf_counter()
        for i in range(TELLS - 1):
            await ref.tell(i)
        await ref.ask("last")  # waits until all earlier tells are handled
        return TELLS / (time.perf_counter() - start)


async def _raw_ask() -> tuple[float, list[float]]:
    req_send, req_recv = trio.open_memory_channel[object](256)

    async def responder() -> None:
        async for reply_to, message in req_recv:
            reply_to.send_nowait(message)

    latencies = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder)
        start = time.perf_counter()
        for i in range(ASKS):
            t0 = time.perf_counter()
            reply_send, reply_recv = trio.open_memory_channel[object](1)
            await req_send.send((reply_send, i))
            await reply_recv.receive()
            latencies.append(time.perf_counter() - t0)
        rate = ASKS / (time.perf_counter() - start)
        nursery.cancel_scope.cancel()
    return rate, latencies


async def _actor_ask() -> tuple[float, list[float]]:
    latencies = []
    async with open_system("bench", grace_period=5) as system:
        ref = await system.spawn(Counter, name="counter")
        start = time.perf_counter()
        for i in range(ASKS):
            t0 = time.perf_counter()
            await ref.ask(i)
            latencies.append(time.perf_counter() - t0)
        return ASKS / (time.perf_counter() - start), latencies


# -- REQ echo servers (each in its own process) --------------------------------------
class Echo(Actor):
    async def handle(self, message: bytes) -> bytes:
        return message


def serve_switchyard_socket(endpoint: str, ready: multiprocessing.synchronize.Event) -> None:
    """The adapter alone: a ROUTER echo loop on ``switchyard.transports.zmq`` (compare zmq-anyio)."""
    from switchyard.transports.zmq import open_socket

    async def main() -> None:
        async with open_socket(zmq.ROUTER, bind=endpoint) as sock:
            ready.set()
            while True:
                await sock.send_multipart(await sock.recv_multipart(copy=False))

    trio.run(main)


def serve_switchyard_actor(endpoint: str, ready: multiprocessing.synchronize.Event) -> None:
    """The default app's health/echo actor: the bridge runs inside the actor that owns it."""
    from switchyard.actors.echo import EchoActor

    async def main() -> None:
        async with open_system("bench", grace_period=1) as system:
            await system.spawn(EchoActor, name="echo", config={"endpoint": endpoint})
            ready.set()
            await trio.sleep_forever()

    trio.run(main)


def serve_switchyard(endpoint: str, ready: multiprocessing.synchronize.Event) -> None:
    """Bridge handler -> ``ask`` to a separate echo actor's mailbox -> reply."""
    from switchyard.transports.zmq_bridges import EndpointConfig, ReqRepServer

    async def main() -> None:
        async with open_system("bench", grace_period=1) as system:
            echo = await system.spawn(Echo, name="echo", mailbox_capacity=1024)

            async def handler(body: bytes) -> bytes:
                return await echo.ask(body)

            server = ReqRepServer(EndpointConfig(endpoint), handler, error_reply=lambda exc, body: b"error")
            await system.root._nursery.start(server.serve)
            ready.set()
            await trio.sleep_forever()

    trio.run(main)


def serve_asyncio(endpoint: str, ready: multiprocessing.synchronize.Event) -> None:
    import zmq.asyncio

    async def main() -> None:
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.REP)
        sock.bind(endpoint)
        ready.set()
        while True:
            await sock.send(await sock.recv())

    asyncio.run(main())


def serve_blocking(endpoint: str, ready: multiprocessing.synchronize.Event) -> None:
    sock = zmq.Context.instance().socket(zmq.REP)
    sock.bind(endpoint)
    ready.set()
    while True:
        sock.send(sock.recv())


def serve_zmq_anyio(endpoint: str, ready: multiprocessing.synchronize.Event) -> None:
    import anyio
    from zmq_anyio import Socket

    async def main() -> None:
        sock = Socket(zmq.Context.instance().socket(zmq.ROUTER))
        sock.bind(endpoint)
        async with sock, anyio.create_task_group() as tg:
            await tg.start(sock.start)
            ready.set()
            while True:
                frames = await sock.arecv_multipart()
                await sock.asend_multipart(frames)

    anyio.run(main, backend="trio")


SERVERS = {
    "blocking pyzmq REP (baseline)": serve_blocking,
    "zmq.asyncio REP (baseline)": serve_asyncio,
    "zmq-anyio ROUTER echo on trio": serve_zmq_anyio,
    "switchyard adapter ROUTER echo on trio": serve_switchyard_socket,
    "switchyard echo actor (bridge owned by the actor)": serve_switchyard_actor,
    "switchyard bridge -> ask another actor": serve_switchyard,
}


def _client(endpoint: str) -> tuple[float, list[float]]:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(endpoint)
    body = b'{"op":"echo","data":"hello"}'
    for _ in range(200):  # warm up
        sock.send(body)
        sock.recv()
    latencies = []
    start = time.perf_counter()
    for _ in range(ECHOES):
        t0 = time.perf_counter()
        sock.send(body)
        sock.recv()
        latencies.append(time.perf_counter() - t0)
    rate = ECHOES / (time.perf_counter() - start)
    sock.close()
    return rate, latencies


def _echo_bench() -> dict[str, tuple[list[float], list[float]]]:
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in SERVERS}
    for run in range(RUNS):
        for index, target in enumerate(SERVERS.values()):  # interleaved, so drift hits every server alike
            endpoint = f"ipc:///tmp/sy-bench-{os.getpid()}-{run}-{index}.sock"
            with server_process(target, endpoint):
                rate, latencies = _client(endpoint)
            name = list(SERVERS)[index]
            results[name][0].append(rate)
            results[name][1].extend(latencies)
    return results


def main() -> None:
    global RUNS
    parser = argparse.ArgumentParser()
    parser.add_argument("--echo-only", action="store_true", help="only the REQ echo servers (a shorter A/B run)")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs per server (default {RUNS})")
    args = parser.parse_args()
    RUNS = args.runs
    if args.echo_only:
        echo = _echo_rows()
        print(section("ZeroMQ bridge", "python -m bench.bench_core --echo-only", echo, f"{RUNS} runs each."))
        return
    rows = []
    raw_tell = [trio.run(_raw_tell) for _ in range(RUNS)]
    our_tell = [trio.run(_actor_tell) for _ in range(RUNS)]
    rows.append(
        [
            "`tell` throughput (msg/s)",
            fmt(median(raw_tell)),
            fmt(median(our_tell)),
            ratio(median(our_tell), median(raw_tell)),
            "0.80x",
        ]
    )
    raw_ask = [trio.run(_raw_ask) for _ in range(RUNS)]
    our_ask = [trio.run(_actor_ask) for _ in range(RUNS)]
    raw_rate = median([r for r, _ in raw_ask])
    our_rate = median([r for r, _ in our_ask])
    rows.append(["`ask` round trips (/s)", fmt(raw_rate), fmt(our_rate), ratio(our_rate, raw_rate), "0.70x"])
    raw_lat = [x for _, lats in raw_ask for x in lats]
    our_lat = [x for _, lats in our_ask for x in lats]
    rows.append(
        [
            "`ask` latency p50 / p99 (µs)",
            f"{median(raw_lat) * 1e6:.1f} / {p99(raw_lat) * 1e6:.1f}",
            f"{median(our_lat) * 1e6:.1f} / {p99(our_lat) * 1e6:.1f}",
            "",
            "",
        ]
    )
    body1 = table(["measure", "raw trio channel", "switchyard actor", "ratio", "goal"], rows)
    notes = (
        f"{RUNS} runs each; {TELLS} tells, {ASKS} asks, {ECHOES} REQ round trips per run; "
        "servers interleaved run by run. Goal for the bridge: >= 1.00x zmq.asyncio."
    )
    body2 = _echo_rows()
    print(section("Core runtime and ZeroMQ bridge", "python -m bench.bench_core", body1 + "\n\n" + body2, notes))


def _echo_rows() -> str:
    echo = _echo_bench()
    asyncio_rate = median(echo["zmq.asyncio REP (baseline)"][0])
    rows2 = []
    for name, (rates, lats) in echo.items():
        rows2.append(
            [
                name,
                fmt(median(rates)),
                f"{median(lats) * 1e6:.0f}",
                f"{p99(lats) * 1e6:.0f}",
                ratio(median(rates), asyncio_rate),
            ]
        )
    return table(
        [
            "server (REQ client in another process, ipc://)",
            "round trips/s (median)",
            "p50 µs",
            "p99 µs",
            "vs zmq.asyncio",
        ],
        rows2,
    )


if __name__ == "__main__":
    sys.exit(main())
