"""IPC socket benchmark: request/response round trips over a Unix socket.

Every server runs in its own process, every client in this one, one request at a
time (latency-bound round trips), servers interleaved run by run:

* baseline: a bare Trio Unix-socket echo server, the client sending the exact bytes
  of one IPC request frame and reading as many back;
* the IPC ``SocketServer`` with the seed's ``async def echo(data)`` handler and a
  ``SocketClient`` (JSON, then msgpack), goal >= 0.8x the baseline (and the loaded
  run keeps >= 80% of the quiet ratio);
* the same with 8 requests in flight on one connection;
* the actor bridge: ``RemoteActorRef.ask`` -> ``ipc_server`` actor -> an echo actor;
* ZeroMQ ``ipc://``: blocking pyzmq REQ against a blocking pyzmq REP echo, same body.

Run: ``python -m bench.bench_ipc`` (part of ``make bench``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.synchronize
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import trio
import zmq

from bench._harness import server_process
from bench._stats import fmt, median, p99, section, table
from switchyard.protocols.codec import json_codec
from switchyard.protocols.ipc import Message
from switchyard.protocols.ipc_framing import encode_frame

RUNS = 7
ROUND_TRIPS = 4000
WARMUP = 200
CONCURRENCY = 8
PAYLOAD = {"message": "hello"}
# What SocketClient puts on the wire for request("echo", PAYLOAD): same id length.
FRAME = encode_frame(Message.request("0123abcd-1234", "echo", PAYLOAD), json_codec)

Result = tuple[float, list[float]]  # round trips/s, per-round-trip latencies (s)


# -- servers (each in its own process) ------------------------------------------------
def serve_bare(path: str, ready: multiprocessing.synchronize.Event) -> None:
    async def echo(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)

    async def main() -> None:
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(path)
        sock.listen(16)
        ready.set()
        await trio.serve_listeners(echo, [trio.SocketListener(sock)])

    trio.run(main)


def serve_ipc(path: str, ready: multiprocessing.synchronize.Event) -> None:
    from switchyard.transports.ipc.server import SocketServer

    async def main() -> None:
        server = SocketServer(path, account_id="bench")  # defaults: heartbeats on

        async def echo(data: Any) -> Any:  # the seed's handler shape
            return data

        server.register_handler("echo", echo)
        async with server:
            ready.set()
            await trio.sleep_forever()

    trio.run(main)


def serve_bridge(path: str, ready: multiprocessing.synchronize.Event) -> None:
    from switchyard.actors.ipc import IpcServerActor
    from switchyard.runtime import Actor, open_system

    class Echo(Actor):
        async def handle(self, message: Any) -> Any:
            return message

    async def main() -> None:
        async with open_system("bench", grace_period=1) as system:
            await system.spawn(Echo, name="echo", mailbox_capacity=1024)
            await system.spawn(IpcServerActor, name="ipc", config={"address": path, "expose": ["echo"]})
            ready.set()
            await trio.sleep_forever()

    trio.run(main)


def serve_zmq(path: str, ready: multiprocessing.synchronize.Event) -> None:
    sock = zmq.Context.instance().socket(zmq.REP)
    sock.bind(f"ipc://{path}")
    ready.set()
    while True:
        sock.send(sock.recv())


# -- clients (this process) -----------------------------------------------------------
def _timed(n: int, one: Callable[[], Any]) -> Result:
    """Synchronous loop helper for the blocking pyzmq client."""
    latencies = []
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        one()
        latencies.append(time.perf_counter() - t0)
    return n / (time.perf_counter() - start), latencies


async def _atimed(n: int, one: Callable[[], Any]) -> Result:
    latencies = []
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        await one()
        latencies.append(time.perf_counter() - t0)
    return n / (time.perf_counter() - start), latencies


def client_bare(path: str) -> Result:
    async def main() -> Result:
        stream = await trio.open_unix_socket(path)
        async with stream:

            async def one() -> None:
                await stream.send_all(FRAME)
                got = 0
                while got < len(FRAME):
                    got += len(await stream.receive_some(65536))

            for _ in range(WARMUP):
                await one()
            return await _atimed(ROUND_TRIPS, one)

    return trio.run(main)


def client_ipc(codec: str) -> Callable[[str], Result]:
    def run(path: str) -> Result:
        from switchyard.transports.ipc.client import open_ipc_client

        async def main() -> Result:
            async with open_ipc_client(path, account_id="bench", codec=codec, max_retries=20) as client:

                async def one() -> None:
                    await client.request("echo", PAYLOAD)

                for _ in range(WARMUP):
                    await one()
                return await _atimed(ROUND_TRIPS, one)

        return trio.run(main)

    return run


def client_ipc_concurrent(path: str) -> Result:
    from switchyard.transports.ipc.client import open_ipc_client

    async def main() -> Result:
        async with open_ipc_client(path, account_id="bench", max_retries=20) as client:
            latencies: list[float] = []

            async def worker(count: int) -> None:
                for _ in range(count):
                    t0 = time.perf_counter()
                    await client.request("echo", PAYLOAD)
                    latencies.append(time.perf_counter() - t0)

            await worker(WARMUP)
            latencies.clear()
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(CONCURRENCY):
                    nursery.start_soon(worker, ROUND_TRIPS // CONCURRENCY)
            done = (ROUND_TRIPS // CONCURRENCY) * CONCURRENCY
            return done / (time.perf_counter() - start), latencies

    return trio.run(main)


def client_bridge(path: str) -> Result:
    from switchyard.remote import open_remote_system

    async def main() -> Result:
        async with open_remote_system(path, max_retries=20) as remote:
            echo = remote.lookup("echo")

            async def one() -> None:
                await echo.ask(PAYLOAD)

            for _ in range(WARMUP):
                await one()
            return await _atimed(ROUND_TRIPS, one)

    return trio.run(main)


def client_zmq(path: str) -> Result:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(f"ipc://{path}")
    body = FRAME[4:]  # the same JSON body; ZeroMQ does its own framing

    def one() -> None:
        sock.send(body)
        sock.recv()

    try:
        for _ in range(WARMUP):
            one()
        return _timed(ROUND_TRIPS, one)
    finally:
        sock.close()


BASELINE = "bare Trio Unix-socket echo (baseline)"
CASES: dict[str, tuple[Callable[..., None], Callable[[str], Result], str]] = {
    BASELINE: (serve_bare, client_bare, ""),
    "IPC SocketServer + SocketClient, JSON": (serve_ipc, client_ipc("json"), ">= 0.8"),
    "IPC SocketServer + SocketClient, msgpack": (serve_ipc, client_ipc("msgpack"), ">= 0.8"),
    f"IPC, JSON, {CONCURRENCY} requests in flight on one connection": (serve_ipc, client_ipc_concurrent, ""),
    "actor bridge: RemoteActorRef.ask -> ipc_server -> echo actor": (serve_bridge, client_bridge, ""),
    "ZeroMQ ipc://, blocking pyzmq REQ -> REP": (serve_zmq, client_zmq, ""),
}


def run_all(runs: int) -> dict[str, tuple[list[float], list[float]]]:
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in CASES}
    with tempfile.TemporaryDirectory(prefix="sy-bench-ipc-") as tmp:
        for run in range(runs):
            for index, (name, (serve, client, _)) in enumerate(CASES.items()):  # interleaved
                path = os.path.join(tmp, f"{run}-{index}.sock")
                with server_process(serve, path, timeout=30):
                    rate, latencies = client(path)
                results[name][0].append(rate)
                results[name][1].extend(latencies)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()
    results = run_all(args.runs)
    base_rates = results[BASELINE][0]
    rows = []
    for name, (rates, latencies) in results.items():
        # Ratio per run (each case ran right after the baseline of its run), then the
        # median: the machine's load drifts between runs far more than within one.
        per_run = [rate / base for rate, base in zip(rates, base_rates, strict=False)]
        rows.append(
            [
                name,
                fmt(median(rates)),
                f"{median(latencies) * 1e6:.0f}",
                f"{p99(latencies) * 1e6:.0f}",
                f"{median(per_run):.2f}x",  # its own cell: the loaded-vs-quiet check reads it
                f"{min(per_run):.2f}-{max(per_run):.2f}",
                CASES[name][2],
            ]
        )
    body = table(
        [
            "path (server in its own process, Unix socket)",
            "round trips/s (median)",
            "p50 µs",
            "p99 µs",
            "vs bare Trio echo: median of per-run ratios",
            "range",
            "goal",
        ],
        rows,
    )
    notes = (
        f"{args.runs} runs, interleaved; {ROUND_TRIPS} round trips per run after {WARMUP} warm-up ones, "
        f"one at a time except the in-flight row. Payload {PAYLOAD!r}; the baseline echoes the "
        f"{len(FRAME)}-byte JSON request frame; the msgpack frame is a few bytes shorter. "
        "The IPC server runs with its defaults (heartbeats on, stats on)."
    )
    print(section("IPC sockets (Unix-domain)", "python -m bench.bench_ipc", body, notes))


if __name__ == "__main__":
    sys.exit(main())
