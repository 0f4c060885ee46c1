"""The robot app end to end: python-socketio client -> bridge -> worker -> child process."""

from __future__ import annotations

import base64
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import socketio
import trio
from test_robot_project import symlink_zip

from switchyard.services.robot import project as robot_project
from switchyard.testing.socketio import open_robot_app, project_zip

MAX_EXEC = 1.5

PROJECT = """
import os
import threading
import time

push_message = None  # replaced by the framework
STOP_MARK = "stopped.txt"  # in the project folder: the only place user code may write


class Robot:
    def add(self, a, b):
        return a + b

    def fail(self):
        raise ValueError("bad value")

    def sleep(self, seconds):
        time.sleep(seconds)
        return "woke"

    def crash(self):
        os._exit(3)

    def crash_later(self, delay=0.2):
        threading.Thread(target=lambda: (time.sleep(delay), os._exit(4)), daemon=True).start()
        return "armed"

    def notify_later(self, delay=0.1):
        def work():
            time.sleep(delay)
            push_message("task_completed", {{"result": "完成", "blob": b"\\x00\\x01"}})
        threading.Thread(target=work, daemon=True).start()
        return {{"status": "started"}}

    def stop(self):
        with open(STOP_MARK, "a") as f:
            f.write("robot.stop\\n")


robot = Robot()


def version():
    return {{"version": 2, "tuple": (1, 2), "nan": float("nan")}}


def stop():
    with open(STOP_MARK, "a") as f:
        f.write("module.stop\\n")
"""


def make_project() -> bytes:
    return project_zip({"main.py": PROJECT.format(), "requirements.txt": "numpy\n"}, folder="my_robot")


def stop_mark(storage: Path) -> Path:
    """Where the project's stop hooks write, seen from the server."""
    return storage / "projects" / "current" / "stopped.txt"


def call(client: socketio.Client, event: str, data: Any, timeout: float = 20) -> dict[str, Any]:
    return client.call(event, data, timeout=timeout)


def process(client: socketio.Client, obj: str, method: str, args: Any = None) -> dict[str, Any]:
    params: dict[str, Any] = {"object": obj, "method": method}
    if args is not None:
        params["args"] = args
    return call(client, "process", {"params": params})


class Client:
    """A python-socketio client that records pushed events."""

    def __init__(self, port: int, transports: list[str] | None = None) -> None:
        self.events: dict[str, list[Any]] = {}
        self.arrived = threading.Condition()
        self.sio = socketio.Client(reconnection=False)
        for name in ("task_completed", "recognition_result", "worker_crashed"):
            self.sio.on(name, self._recorder(name))
        self.refusal: Any = None
        self.sio.on("connect_error", self._refused)
        kwargs = {"transports": transports} if transports else {}
        self.sio.connect(f"http://127.0.0.1:{port}", wait_timeout=10, **kwargs)

    def _refused(self, data: Any) -> None:
        self.refusal = data

    def _recorder(self, name: str):  # type: ignore[no-untyped-def]
        def record(data: Any) -> None:
            with self.arrived:
                self.events.setdefault(name, []).append(data)
                self.arrived.notify_all()

        return record

    def wait_event(self, name: str, timeout: float = 10.0) -> Any:
        with self.arrived:
            assert self.arrived.wait_for(lambda: self.events.get(name), timeout), f"no {name} event"
            return self.events[name][0]


def wait_for_file_lines(path: Path, lines: set[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and lines <= set(path.read_text().split()):
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} never held {lines}: {path.read_text() if path.exists() else 'missing'}")


@pytest.mark.parametrize("transports", [None, ["websocket"]], ids=["polling-then-upgrade", "websocket-only"])
async def test_full_flow(tmp_path: Path, transports: list[str] | None) -> None:
    zipped = base64.b64encode(make_project()).decode()
    async with open_robot_app(tmp_path / "storage", worker={"max_execution_time": MAX_EXEC}) as (_, port):

        def run() -> dict[str, Any]:
            c = Client(port, transports)
            out: dict[str, Any] = {"update": None}
            out["update"] = call(c.sio, "update", {"data": zipped})
            out["start"] = call(c.sio, "start", {})
            out["add"] = process(c.sio, "robot", "add", {"a": 2, "b": 3})
            out["function"] = process(c.sio, "", "version")
            out["positional"] = process(c.sio, "robot", "add", [10, 5])
            out["fail"] = process(c.sio, "robot", "fail")
            out["missing"] = process(c.sio, "robot", "fly")
            out["private"] = process(c.sio, "robot", "__class__")
            out["notify"] = process(c.sio, "robot", "notify_later")
            out["pushed"] = c.wait_event("task_completed")
            out["unknown_event"] = call(c.sio, "dance", {})
            out["echo"] = call(c.sio, "echo", {"x": [1]})
            c.sio.sleep(0.3)
            out["transport"] = c.sio.transport()
            c.sio.disconnect()
            wait_for_file_lines(stop_mark(tmp_path / "storage"), {"robot.stop", "module.stop"})
            return out

        out = await trio.to_thread.run_sync(run)
    assert out["update"]["status"] == "success", out["update"]
    assert out["update"]["data"] == {
        "files": 2,
        "bytes": out["update"]["data"]["bytes"],
        "top_folder": "my_robot",
        "requirements_txt": True,
    }
    assert out["start"]["status"] == "success" and out["start"]["message"] == "Project started"
    assert "robot" in out["start"]["data"]["objects"] and "version" in out["start"]["data"]["functions"]
    assert out["add"] == {"status": "success", "message": "robot.add executed", "data": 5}
    assert out["function"]["data"] == {"version": 2, "tuple": [1, 2], "nan": "nan"}
    assert out["positional"]["data"] == 15
    assert out["fail"]["status"] == "error" and out["fail"]["message"] == "ValueError: bad value"
    assert out["fail"]["data"]["error_type"] == "ValueError"
    assert (
        "main.py" in out["fail"]["data"]["traceback"]
        and "services/robot/child.py" not in out["fail"]["data"]["traceback"]
    )
    assert out["missing"]["status"] == "error" and "no attribute 'fly'" in out["missing"]["message"]
    assert out["private"]["status"] == "error" and "not a public name" in out["private"]["message"]
    assert out["notify"]["data"] == {"status": "started"}
    assert out["pushed"] == {"result": "完成", "blob": base64.b64encode(b"\x00\x01").decode()}
    assert out["unknown_event"]["status"] == "error" and "unknown event 'dance'" in out["unknown_event"]["message"]
    assert out["echo"] == {"x": [1]}
    # Without transports=["websocket"] the client opens with polling: being on a
    # WebSocket now means the polling -> websocket upgrade went through.
    assert out["transport"] == "websocket"


async def test_second_client_refused(tmp_path: Path) -> None:
    async with open_robot_app(tmp_path / "storage") as (_, port):

        def run() -> tuple[Any, Any]:
            first = Client(port)
            # The refused client's connect_error carries the reason.
            second = socketio.Client(reconnection=False)
            seen: list[Any] = []
            second.on("connect_error", lambda data: seen.append(data))
            with pytest.raises(socketio.exceptions.ConnectionError):
                second.connect(f"http://127.0.0.1:{port}", wait_timeout=5)
            refusal = seen[0] if seen else None
            still = process(first.sio, "sport_client", "get_status")
            first.sio.disconnect()
            return refusal, still

        refusal, still = await trio.to_thread.run_sync(run)
    assert "only one client at a time" in refusal["message"]
    assert refusal["data"] == {"reason": "busy", "max_clients": 1}
    assert still["status"] == "success"


HOSTILE = {
    "traversal": (project_zip({"main.py": "x=1", "../../escape.py": "boom"}), "path traversal"),
    "symlink": (symlink_zip(), "symlink"),
    "bomb": (project_zip({"main.py": "x=1", "zeros.bin": b"\0" * (8 << 20)}), "zip bomb"),
    "no_main": (project_zip({"app.py": "x=1"}), "no main.py"),
    "not_zip": (b"definitely not a zip" * 50, "not a valid ZIP"),
    "over_limit": (project_zip({"main.py": os.urandom(300_000)}), "the limit is 200000"),
}


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


async def test_hostile_zips_rejected_and_current_unchanged(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    async with open_robot_app(storage, worker={"max_zip_bytes": 200_000}) as (_, port):
        projects = storage / "projects"
        link, before = os.readlink(projects / "current"), _tree(projects / "current")

        def run() -> dict[str, Any]:
            c = Client(port)
            acks = {
                name: call(c.sio, "update", {"data": base64.b64encode(blob).decode()})
                for name, (blob, _) in HOSTILE.items()
            }
            acks["zip_data_binary"] = call(c.sio, "update", {"zip_data": HOSTILE["traversal"][0]})
            acks["bad_base64"] = call(c.sio, "update", {"data": "@@@not base64@@@"})
            acks["missing"] = call(c.sio, "update", {})
            acks["after"] = process(c.sio, "sport_client", "StandUp")
            c.sio.disconnect()
            return acks

        acks = await trio.to_thread.run_sync(run)
        for name, (_, words) in HOSTILE.items():
            assert acks[name]["status"] == "error", name
            assert acks[name]["message"].startswith("project rejected: ") and words in acks[name]["message"], acks[name]
        assert "path traversal" in acks["zip_data_binary"]["message"]
        assert acks["bad_base64"]["message"] == "project rejected: 'data' is not valid base64"
        assert "needs the project ZIP" in acks["missing"]["message"]
        assert acks["after"]["status"] == "success"  # the default project still runs
        assert os.readlink(projects / "current") == link
        assert _tree(projects / "current") == before
        assert not (tmp_path / "escape.py").exists() and not list(projects.glob(".staging-*"))


async def test_max_execution_time_kills_and_restarts(tmp_path: Path) -> None:
    zipped = base64.b64encode(make_project()).decode()
    async with open_robot_app(tmp_path / "storage", worker={"max_execution_time": MAX_EXEC}) as (_, port):

        def run() -> dict[str, Any]:
            c = Client(port, ["websocket"])
            out = {"update": call(c.sio, "update", {"data": zipped})}
            out["ok"] = process(c.sio, "robot", "sleep", {"seconds": 0.1})
            started = time.monotonic()
            out["slow"] = process(c.sio, "robot", "sleep", {"seconds": 30})
            out["elapsed"] = time.monotonic() - started
            out["after"] = process(c.sio, "robot", "add", {"a": 1, "b": 1})
            c.sio.disconnect()
            return out

        out = await trio.to_thread.run_sync(run)
    assert out["ok"]["data"] == "woke"
    assert out["slow"]["status"] == "error"
    assert "exceeded max_execution_time (1.5 s)" in out["slow"]["message"]
    assert "killed and restarted" in out["slow"]["message"]
    assert MAX_EXEC <= out["elapsed"] < MAX_EXEC + 5
    assert out["after"] == {"status": "success", "message": "robot.add executed", "data": 2}


async def test_os_exit_in_user_code(tmp_path: Path) -> None:
    zipped = base64.b64encode(make_project()).decode()
    async with open_robot_app(tmp_path / "storage", worker={"max_execution_time": MAX_EXEC}) as (_, port):

        def run() -> dict[str, Any]:
            c = Client(port)
            out = {"update": call(c.sio, "update", {"data": zipped})}
            out["crash"] = process(c.sio, "robot", "crash")
            out["after"] = process(c.sio, "robot", "add", {"a": 1, "b": 2})
            out["armed"] = process(c.sio, "robot", "crash_later")
            out["crashed_event"] = c.wait_event("worker_crashed")
            out["after_idle_crash"] = process(c.sio, "robot", "add", {"a": 2, "b": 2})
            c.sio.disconnect()
            return out

        out = await trio.to_thread.run_sync(run)
    assert out["crash"]["status"] == "error"
    assert "crashed during process robot.crash() (exit code 3)" in out["crash"]["message"]
    assert out["crash"]["data"] == {"error_type": "WorkerCrashed", "exit_code": 3}
    assert out["after"]["data"] == 3
    assert out["armed"]["data"] == "armed"
    assert out["crashed_event"]["status"] == "error" and out["crashed_event"]["data"] == {"exit_code": 4}
    assert out["after_idle_crash"]["data"] == 4


async def test_default_project_without_start(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    async with open_robot_app(storage) as (_, port):
        current = robot_project.current_project(storage / "projects")
        for p in current.iterdir():  # an emptied current/ gets a copy of default/
            p.unlink()

        def run() -> dict[str, Any]:
            c = Client(port)
            out = {"stand": process(c.sio, "sport_client", "StandUp")}
            out["move"] = process(c.sio, "sport_client", "Move", {"vx": 0.5, "duration": 2})
            out["recognition"] = process(c.sio, "sport_client", "start_recognition", {"interval": 0.05})
            out["result"] = c.wait_event("recognition_result")
            out["status"] = process(c.sio, "sport_client", "get_status")
            c.sio.disconnect()
            return out

        out = await trio.to_thread.run_sync(run)
        assert (robot_project.current_project(storage / "projects") / "main.py").exists()
    assert out["stand"]["data"] == {"posture": "standing"}
    assert out["move"]["data"]["position"]["x"] == 1.0
    assert set(out["result"]) == {"count", "object", "confidence", "timestamp"}
    assert out["status"]["data"]["recognition_running"] is True


async def test_each_event_lands_in_the_socketio_latency_histogram(tmp_path: Path) -> None:
    async with open_robot_app(tmp_path / "storage") as (system, port):

        def run() -> None:
            c = Client(port)
            try:
                for _ in range(3):
                    assert c.sio.call("echo", {"x": 1}, timeout=10) == {"x": 1}
            finally:
                c.sio.disconnect()

        await trio.to_thread.run_sync(run)
        text = system.metrics.render().decode()
    assert 'switchyard_request_seconds_count{actor="socketio_bridge",bridge="socketio"} 3.0' in text
