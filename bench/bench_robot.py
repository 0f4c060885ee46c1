"""Robot control: Socket.IO round trips through the bridge (and the worker), vs python-socketio.

Two servers run side by side, each in its own process, answering the same events:

* switchyard: the ``socketio_bridge`` + ``robot_worker`` actors (Trio, h11 polling,
  WebSocket over wsproto in the connection's own task);
* baseline: python-socketio's ``AsyncServer`` on uvicorn (asyncio), ``echo`` answered
  in the handler and ``process`` forwarded, as the seed's backend does, over a
  ZeroMQ ipc:// REQ socket (zmq.asyncio) to a worker process running the same
  project with the same child program (``services/robot/child.py``).

One client, the same for both: a minimal Engine.IO/Socket.IO client over a raw
WebSocket (``transport=websocket``, hand-made frames on a blocking socket) in this
process, light enough that the servers, not the client, set the pace.
It measures sequential round trips (emit, wait for the ack) and pipelined ones (a
window of events in flight), and the time to upload and unpack a 10 MB project (emit
``update`` to ack, which includes restarting the worker process).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing.synchronize
import os
import shutil
import socket
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import trio

from bench._harness import server_process
from bench._stats import fmt, median, p99, ratio, section, table
from switchyard.testing.ports import free_tcp_port
from switchyard.testing.socketio import project_zip

RUNS = 5
SEQUENTIAL = 800
PIPELINED = 3000
WINDOW = 32
PROCESS_SEQUENTIAL = 400
PROCESS_PIPELINED = 800
UPLOADS = 5
UPLOAD_BYTES = 10 * 1024 * 1024

PROCESS_PARAMS = {"params": {"object": "sport_client", "method": "get_status", "args": {}}}


# -- servers ---------------------------------------------------------------------------


def serve_switchyard(port: int, storage: str, echo_only: bool, ready: multiprocessing.synchronize.Event) -> None:
    from switchyard.runtime import open_system
    from switchyard.services.robot.socketio_bridge import SocketIOBridgeActor
    from switchyard.services.robot.worker import RobotWorkerActor

    async def main() -> None:
        async with open_system("bench-robot") as system:
            if not echo_only:
                await system.spawn(
                    RobotWorkerActor, name="robot_worker", config={"storage_root": storage, "max_execution_time": 60.0}
                )
            await system.spawn(SocketIOBridgeActor, name="socketio_bridge", config={"port": port})
            ready.set()
            await trio.sleep_forever()

    trio.run(main)


def serve_baseline(port: int, storage: str, echo_only: bool, ready: multiprocessing.synchronize.Event) -> None:
    import logging

    import socketio
    import uvicorn
    import zmq
    import zmq.asyncio

    from switchyard.services.robot.project import shipped_default
    from switchyard.services.robot.worker import CHILD_SCRIPT

    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    project = Path(storage) / "project"
    shutil.copytree(shipped_default(), project, ignore=shutil.ignore_patterns("__init__.py", "__pycache__"))

    async def main() -> None:
        ctx = zmq.asyncio.Context()
        cmd = f"ipc://{storage}/cmd.sock"
        pub = f"ipc://{storage}/pub.sock"
        req = ctx.socket(zmq.REQ)
        req.bind(cmd)
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.bind(pub)
        child = None
        if not echo_only:
            child = await asyncio.create_subprocess_exec(sys.executable, "-P", CHILD_SCRIPT, cmd, pub, str(project))
        lock = asyncio.Lock()
        sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*", max_http_buffer_size=100 * 1024 * 1024)

        @sio.on("echo")
        async def echo(sid: str, data: Any) -> Any:
            return data

        @sio.on("process")
        async def process(sid: str, data: Any) -> Any:
            async with lock:  # REQ is lockstep, as in the seed's ZMQ manager
                await req.send(
                    json.dumps({"command": "process", "data": {}, "params": data.get("params", {})}).encode()
                )
                return json.loads(await req.recv())

        async def forward_callbacks() -> None:  # as the seed's server does (and libzmq needs
            while True:  # the SUB socket used to send its subscription)
                message = json.loads(await sub.recv())
                await sio.emit(message["data"]["event"], message["data"].get("data"))

        callbacks = asyncio.create_task(forward_callbacks() if not echo_only else asyncio.sleep(0))
        server = uvicorn.Server(
            uvicorn.Config(socketio.ASGIApp(sio), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        ready.set()
        try:
            await task
        finally:
            callbacks.cancel()
            if child is not None:
                child.kill()

    asyncio.run(main())


SERVERS = {"switchyard (Trio)": serve_switchyard, "python-socketio AsyncServer on uvicorn": serve_baseline}


# -- the client ------------------------------------------------------------------------


class Client:
    """Engine.IO 4 / Socket.IO 5 over one WebSocket, on a plain blocking socket.

    Deliberately minimal so that the servers, not the client, set the pace: frames
    are built and parsed by hand (client frames use an all-zero masking key, which
    is a valid key and leaves the payload as is), and a window of events is written
    with one ``sendall``. Both servers get exactly this client.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.next_id = 0
        assert self.next_text().startswith("0")
        self.sock.sendall(_frame("40"))
        assert self.next_text().startswith("40")

    def _recv(self) -> bytes:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("server closed the connection")
        return data

    def _frames(self) -> list[str]:
        """Every complete text frame now buffered (reading once more if there is none)."""
        out: list[str] = []
        while not out:
            buf, pos = self.buf, 0
            while len(buf) - pos >= 2:
                opcode, length = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
                start = pos + 2
                if length == 126:
                    length, start = int.from_bytes(buf[start : start + 2], "big"), start + 2
                elif length == 127:
                    length, start = int.from_bytes(buf[start : start + 8], "big"), start + 8
                if len(buf) < start + length:
                    break
                payload = buf[start : start + length]
                pos = start + length
                if opcode == 1:
                    text = payload.decode()
                    if text == "2":  # Engine.IO ping
                        self.sock.sendall(_frame("3"))
                    else:
                        out.append(text)
                elif opcode == 9:  # WebSocket ping
                    self.sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
                elif opcode == 8:
                    raise ConnectionError("server closed the WebSocket")
            self.buf = buf[pos:]
            if not out:
                self.buf += self._recv()
        return out

    def next_text(self) -> str:
        frames = self._frames()
        if len(frames) > 1:
            raise AssertionError(f"unexpected frames {frames[1:]}")
        return frames[0]

    def call(self, body: str) -> str:
        """One event (``body`` is the JSON array after the id), waits for its ack."""
        ack_id = self.next_id
        self.next_id += 1
        self.sock.sendall(_frame(f"42{ack_id}{body}"))
        reply = self.next_text()
        assert reply.startswith(f"43{ack_id}["), reply[:200]
        return reply

    def pipelined(self, body: str, count: int, window: int) -> float:
        """``count`` events with at most ``window`` unanswered; returns seconds."""
        started = time.perf_counter()
        sent = answered = 0
        while answered < count:
            batch = []
            while sent < count and sent - answered < window:
                batch.append(_frame(f"42{self.next_id}{body}"))
                self.next_id += 1
                sent += 1
            if batch:
                self.sock.sendall(b"".join(batch))
            for reply in self._frames():
                assert reply.startswith("43"), reply[:200]
                answered += 1
        return time.perf_counter() - started

    def close(self) -> None:
        try:
            self.sock.sendall(_frame("41") + bytes([0x88, 0x80]) + b"\0\0\0\0")
        finally:
            self.sock.close()


def _frame(text: str) -> bytes:
    data = text.encode()
    n = len(data)
    if n < 126:
        header = bytes([0x81, 0x80 | n])
    elif n < 1 << 16:
        header = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    return header + b"\0\0\0\0" + data


def _measure(port: int, body: str, sequential: int, pipelined: int) -> tuple[list[float], float]:
    client = Client(port)
    try:
        for _ in range(50):
            client.call(body)  # warm up
        latencies = []
        for _ in range(sequential):
            t0 = time.perf_counter()
            client.call(body)
            latencies.append(time.perf_counter() - t0)
        rate = pipelined / client.pipelined(body, pipelined, WINDOW)
    finally:
        client.close()
    time.sleep(0.1)  # let the server see the disconnect (one client at a time)
    return latencies, rate


def _upload(port: int, blob: bytes) -> float:
    body = '["update",{"data":"' + base64.b64encode(blob).decode() + '"}]'
    client = Client(port)
    try:
        started = time.perf_counter()
        reply = client.call(body)
        took = time.perf_counter() - started
        assert '"status":"success"' in reply, reply[:300]
    finally:
        client.close()
    time.sleep(0.1)
    return took


def _project_10mb() -> bytes:
    files: dict[str, str | bytes] = {"main.py": "class R:\n    def ping(self):\n        return 'pong'\n\n\nr = R()\n"}
    for i in range(10):
        files[f"assets/blob{i}.bin"] = os.urandom(UPLOAD_BYTES // 10)
    return project_zip(files)


def _bench(ports: dict[str, int], echo_only: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {
        name: {"echo_lat": [], "echo_rate": [], "proc_lat": [], "proc_rate": []} for name in ports
    }
    echo_body = '["echo",{"n":1,"text":"hello robot"}]'
    process_body = '["process",' + json.dumps(PROCESS_PARAMS) + "]"
    for _ in range(RUNS):
        for name, port in ports.items():  # interleaved, so drift hits both alike
            lat, rate = _measure(port, echo_body, SEQUENTIAL, PIPELINED)
            results[name]["echo_lat"].extend(lat)
            results[name]["echo_rate"].append(rate)
            if echo_only:
                continue
            lat, rate = _measure(port, process_body, PROCESS_SEQUENTIAL, PROCESS_PIPELINED)
            results[name]["proc_lat"].extend(lat)
            results[name]["proc_rate"].append(rate)
    if echo_only:
        return results
    blob = _project_10mb()
    ours = next(iter(ports.values()))
    results["upload"] = [_upload(ours, blob) for _ in range(UPLOADS)]
    results["upload_size"] = len(blob)
    return results


def _install_only(blob: bytes) -> list[float]:
    """The unpack step alone (validation, extraction, swap), without transport or restart."""
    from switchyard.services.robot import project as robot_project

    times = []
    with tempfile.TemporaryDirectory() as tmp:
        projects = Path(tmp) / "projects"
        robot_project.ensure_layout(projects)
        for _ in range(UPLOADS):
            t0 = time.perf_counter()
            robot_project.install_zip(projects, blob, robot_project.ZipLimits())
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--echo-only", action="store_true", help="only the echo rows (no worker process, no upload)")
    args = parser.parse_args()
    ports: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="sy-bench-robot-") as tmp, ExitStack() as servers:
        for i, (name, target) in enumerate(SERVERS.items()):
            port = free_tcp_port()
            storage = os.path.join(tmp, str(i))
            os.makedirs(storage)
            servers.enter_context(server_process(target, port, storage, args.echo_only))
            ports[name] = port
        results = _bench(ports, args.echo_only)
    if args.echo_only:
        _print_echo_only(results, list(ports))
        return
    install = _install_only(_project_10mb())

    ours, base = list(ports)
    rows = []
    for label, lat_key, rate_key in (
        ("`echo` (bare event on the bridge)", "echo_lat", "echo_rate"),
        ("`process` (bridge -> worker process -> ack)", "proc_lat", "proc_rate"),
    ):
        r_ours, r_base = results[ours], results[base]
        seq_ours = 1 / median(r_ours[lat_key])
        seq_base = 1 / median(r_base[lat_key])
        rows.append(
            [
                f"{label}, sequential",
                fmt(seq_ours),
                fmt(seq_base),
                ratio(seq_ours, seq_base),
                f"{median(r_ours[lat_key]) * 1e6:.0f} / {p99(r_ours[lat_key]) * 1e6:.0f}",
                f"{median(r_base[lat_key]) * 1e6:.0f} / {p99(r_base[lat_key]) * 1e6:.0f}",
            ]
        )
        pipe_ours, pipe_base = median(r_ours[rate_key]), median(r_base[rate_key])
        rows.append(
            [f"{label}, {WINDOW} in flight", fmt(pipe_ours), fmt(pipe_base), ratio(pipe_ours, pipe_base), "", ""]
        )
    body = table(
        [
            "round trips/s (median of runs)",
            "switchyard",
            "python-socketio + uvicorn",
            "ratio",
            "switchyard p50 / p99 µs",
            "baseline p50 / p99 µs",
        ],
        rows,
    )
    up = results["upload"]
    size_mb = results["upload_size"] / 1e6
    body2 = table(
        ["10 MB project upload", "median s", "p99 s"],
        [
            [
                f"`update` emit -> ack ({size_mb:.1f} MB ZIP, base64 over WebSocket; includes the worker restart)",
                f"{median(up):.2f}",
                f"{p99(up):.2f}",
            ],
            [
                "unpack alone (validate, extract, swap `current`), in process",
                f"{median(install):.2f}",
                f"{p99(install):.2f}",
            ],
        ],
    )
    import uvicorn

    ws_impl = "websockets" if _has("websockets") else "wsproto"
    notes = (
        f"{RUNS} runs, servers interleaved; per run {SEQUENTIAL} sequential + {PIPELINED} pipelined `echo` and "
        f"{PROCESS_SEQUENTIAL} + {PROCESS_PIPELINED} `process` (`sport_client.get_status` of the default "
        f"project), the same minimal WebSocket client (hand-made frames, blocking socket) for both servers. "
        f"Baseline: python-socketio AsyncServer on uvicorn {uvicorn.__version__} "
        f"(asyncio, h11, {ws_impl} WebSocket) with the seed's ZeroMQ REQ -> worker design for `process`. "
        "Goal: bare echo >= 1.5x python-socketio."
    )
    print(
        section(
            "Robot control (Socket.IO bridge + worker)", "python -m bench.bench_robot", body + "\n\n" + body2, notes
        )
    )


def _print_echo_only(results: dict[str, Any], names: list[str]) -> None:
    ours, base = (results[n] for n in names)
    seq_ours, seq_base = 1 / median(ours["echo_lat"]), 1 / median(base["echo_lat"])
    pipe_ours, pipe_base = median(ours["echo_rate"]), median(base["echo_rate"])
    rows = [
        ["`echo`, sequential", fmt(seq_ours), fmt(seq_base), ratio(seq_ours, seq_base)],
        [f"`echo`, {WINDOW} in flight", fmt(pipe_ours), fmt(pipe_base), ratio(pipe_ours, pipe_base)],
    ]
    body = table(["round trips/s (median of runs)", "switchyard", "python-socketio + uvicorn", "ratio"], rows)
    print(section("Robot control, echo only", "python -m bench.bench_robot --echo-only", body, f"{RUNS} runs."))


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
