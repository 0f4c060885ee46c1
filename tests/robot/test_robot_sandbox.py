"""A hostile uploaded project against the real robot worker actor, with and without bubblewrap.

Each test uploads one real project ZIP through the actor (``RobotRequest("update")``)
and calls its functions (``RobotRequest("process")``), exactly as the Socket.IO
bridge does. The bubblewrap tests skip only when bwrap is missing and CI is not set;
under ``CI=true`` they run (and fail without bwrap). The no-bubblewrap variants run
where the promise they check holds (a uid drop needs a root server).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import zmq

from switchyard.runtime import ConfigError
from switchyard.runtime.errors import single_cause
from switchyard.services.robot.messages import RobotRequest
from switchyard.services.robot.worker import RobotWorkerActor
from switchyard.testing.socketio import project_zip
from switchyard.testing.system import run_system

HOSTILE = """
import os
import signal
import socket
import subprocess


def read(path):
    with open(path, "rb") as f:
        return f.read(200).decode("latin-1")


def environ():
    return dict(os.environ)


def write(path, size=5):
    with open(path, "wb") as f:
        f.write(b"x" * size)
    return "written"


def alloc(n):
    return len(bytearray(n))


def daemon(marker):
    # the shell exits at once: the sleep is an orphan in a session of its own
    subprocess.run(["sh", "-c", f"setsid sleep {marker} > /dev/null 2>&1 < /dev/null &"], check=True)
    return "started"


def forked(marker):
    subprocess.Popen(["sleep", marker], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return "started"


def kill(pid):
    os.kill(pid, signal.SIGKILL)
    return "sent"


def connect(port):
    with socket.create_connection(("127.0.0.1", port), timeout=3):
        return "connected"


def listdir(path):
    return sorted(os.listdir(path))


def limits():
    with open("/proc/self/limits") as f:
        return f.read()


def whoami():
    return [os.getuid(), os.getgid(), os.getpid(), os.getppid()]


def threads(n):
    import threading

    release = threading.Event()
    started = 0
    try:
        for _ in range(n):
            threading.Thread(target=release.wait, daemon=True).start()
            started += 1
    except RuntimeError:
        return ["limited", started]
    finally:
        release.set()
    return ["unlimited", started]


def boom():
    raise ValueError("failed in " + __file__ + " under " + os.getcwd())
"""

SECRET_NAME = "SY_ROBOT_TEST_API_KEY"
SECRET = "sk-test-" + uuid.uuid4().hex
ROOT = os.geteuid() == 0
BWRAP = shutil.which("bwrap")
IN_CI = os.environ.get("CI") == "true"

Call = Callable[..., Awaitable[dict[str, Any]]]


@attrs.frozen
class Mode:
    name: str
    config: dict[str, Any]
    storage: Path

    @property
    def bwrap(self) -> bool:
        return self.name == "bwrap"


def _reachable_dir(prefix: str) -> Path:
    """A fresh directory uid 65534 can pass through (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o711)
    return path


@pytest.fixture(scope="session")
def reachable_python() -> Iterator[str | None]:
    """An interpreter with pyzmq that uid 65534 can run (this one may live under /root)."""
    if not ROOT:
        yield sys.executable
        return
    system = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin:/usr/local/bin")
    if system is None:
        yield None
        return
    base = _reachable_dir("sy-robot-python-")
    base.chmod(0o755)
    venv = base / "venv"
    subprocess.run([system, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "switchyard_test_zmq.pth").write_text(str(Path(zmq.__file__).parent.parent) + "\n")
    yield str(venv / "bin" / "python")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["bwrap", "no-bwrap"])
def mode(request: pytest.FixtureRequest, reachable_python: str | None, tmp_path: Path) -> Iterator[Mode]:
    if request.param == "bwrap":
        if BWRAP is None and not IN_CI:
            pytest.skip("bubblewrap is not installed here (CI=true runs these tests and needs it)")
        yield Mode("bwrap", {"sandbox": "required"}, tmp_path / "storage")
        return
    if reachable_python is None:
        pytest.skip(f"no python{sys.version_info.major}.{sys.version_info.minor} in /usr/bin for uid 65534")
    base = _reachable_dir("sy-robot-nobwrap-") if ROOT else tmp_path
    yield Mode("no-bwrap", {"sandbox": "off", "python": reachable_python}, base / "storage")
    if base != tmp_path:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def mode_no_bwrap(reachable_python: str | None, tmp_path: Path) -> Iterator[Mode]:
    """The no-bubblewrap mode alone (for tests of that mode only)."""
    if reachable_python is None:
        pytest.skip(f"no python{sys.version_info.major}.{sys.version_info.minor} in /usr/bin for uid 65534")
    base = _reachable_dir("sy-robot-nobwrap-") if ROOT else tmp_path
    yield Mode("no-bwrap", {"sandbox": "off", "python": reachable_python}, base / "storage")
    if base != tmp_path:
        shutil.rmtree(base, ignore_errors=True)


def needs_uid_drop(mode: Mode) -> None:
    if not mode.bwrap and not ROOT:
        pytest.skip("without bubblewrap this holds only when the server is root (uid drop)")


@asynccontextmanager
async def hostile_worker(mode: Mode, **config: Any) -> AsyncIterator[Call]:
    """The robot worker actor with the hostile project installed; yields ``call(function, *args)``."""
    async with run_system("sandbox-test", grace_period=3.0) as system:
        await system.spawn(
            RobotWorkerActor,
            name="robot_worker",
            config={"storage_root": str(mode.storage), "notify": "", **mode.config, **config},
        )
        ref = system.lookup("robot_worker")
        blob = base64.b64encode(project_zip({"main.py": HOSTILE}, folder="evil")).decode()
        update = await ref.ask(RobotRequest("update", {"data": blob}), timeout=60)
        assert update["status"] == "success", update

        async def call(function: str, *args: Any) -> dict[str, Any]:
            params = {"object": function, "args": list(args)}
            reply: dict[str, Any] = await ref.ask(RobotRequest("process", {"params": params}), timeout=60)
            return reply

        yield call


async def _refused(mode: Mode, words: str, **config: Any) -> str:
    """The worker refuses to start: one ConfigError line holding ``words``."""
    with pytest.raises(BaseException) as info:  # a group from the system's nursery
        async with hostile_worker(mode, **config):
            pass
    cause = single_cause(info.value)
    assert isinstance(cause, ConfigError), info.value
    assert words in str(cause) and "\n" not in str(cause)
    return str(cause)


def _error_type(reply: dict[str, Any]) -> str:
    assert reply["status"] == "error", reply
    return str(reply["data"]["error_type"])


def _pids_with(marker: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry.name))
            except OSError:
                pass
    return found


async def _wait_gone(marker: str, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _pids_with(marker)) and time.monotonic() < deadline:
        await trio.sleep(0.05)
    return left


async def test_reading_etc_shadow_is_denied(mode: Mode) -> None:
    needs_uid_drop(mode)
    async with hostile_worker(mode) as call:
        shadow = await call("read", "/etc/shadow")
        passwd = await call("read", "/etc/passwd")  # the read-only system view is there
    assert _error_type(shadow) == "PermissionError"
    assert passwd["status"] == "success" and "root:" in passwd["data"]


async def test_server_environment_is_not_visible(mode: Mode, monkeypatch: pytest.MonkeyPatch) -> None:
    needs_uid_drop(mode)
    monkeypatch.setenv(SECRET_NAME, SECRET)
    async with hostile_worker(mode) as call:
        env = await call("environ")
        uid, _, _, ppid = (await call("whoami"))["data"]
        parent = await call("read", f"/proc/{ppid}/environ")
        server = await call("read", f"/proc/{os.getpid()}/environ")
    assert env["status"] == "success"
    assert SECRET_NAME not in env["data"] and SECRET not in str(env["data"])
    assert set(env["data"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PWD"}
    for reply in (parent, server):
        assert SECRET not in str(reply), reply
    if mode.bwrap:
        assert ppid == 1  # bubblewrap's init: the server is not in the PID namespace
        assert _error_type(server) in ("FileNotFoundError", "PermissionError")
    else:
        assert ppid == os.getpid()
        assert _error_type(parent) == "PermissionError" and _error_type(server) == "PermissionError"
    assert uid != 0


async def test_writes_outside_its_folder_are_denied(mode: Mode) -> None:
    default_main = mode.storage / "projects" / "default" / "main.py"
    async with hostile_worker(mode) as call:
        before = default_main.read_bytes()
        to_default = await call("write", str(default_main))
        to_etc = await call("write", "/etc/switchyard-pwned")
        own = await call("write", "own.txt")
        tmp = await call("write", "/tmp/scratch.txt")
    assert to_default["status"] == "error", to_default
    assert default_main.read_bytes() == before
    assert to_etc["status"] == "error" and not Path("/etc/switchyard-pwned").exists()
    assert own["data"] == "written" and tmp["data"] == "written"
    assert (mode.storage / "projects" / "current" / "own.txt").read_bytes() == b"xxxxx"
    if mode.bwrap:
        assert _error_type(to_default) == "FileNotFoundError"  # the storage does not exist inside
    elif ROOT:
        assert _error_type(to_default) == "PermissionError"


async def test_storage_is_invisible_inside_bubblewrap(mode: Mode) -> None:
    if not mode.bwrap:
        pytest.skip("without bubblewrap the storage is hidden only by its modes (see the write test)")
    async with hostile_worker(mode) as call:
        storage = await call("listdir", str(mode.storage))
        projects = await call("listdir", str(mode.storage / "projects"))
        here = await call("listdir", ".")
    assert _error_type(storage) == "FileNotFoundError"
    assert _error_type(projects) == "FileNotFoundError"
    assert here["data"] == ["main.py"]


async def test_allocating_4_gib_fails_and_the_worker_goes_on(mode: Mode) -> None:
    async with hostile_worker(mode) as call:
        big = await call("alloc", 4 * 1024**3)
        small = await call("alloc", 64 * 1024**2)
        after = await call("whoami")
    assert _error_type(big) == "MemoryError"
    assert small["data"] == 64 * 1024**2
    assert after["status"] == "success"


async def test_file_size_and_open_file_limits(mode: Mode) -> None:
    async with hostile_worker(mode, max_file_bytes=1_000_000, max_open_files=200) as call:
        big = await call("write", "big.bin", 2_000_000)
        ok = await call("write", "ok.bin", 500_000)
        limits = (await call("limits"))["data"]
    assert _error_type(big) == "OSError" and "too large" in big["message"]
    assert ok["data"] == "written"
    assert "Max open files            200                  200" in limits
    assert "Max file size             1000000              1000000" in limits
    assert "Max address space         2147483648           2147483648" in limits


async def test_process_limit(mode: Mode) -> None:
    async with hostile_worker(mode, max_processes=40) as call:
        limited = await call("threads", 500)
        after = await call("threads", 5)  # the earlier threads are gone: room again
    assert limited["data"][0] == "limited" and limited["data"][1] < 40, limited
    assert after["data"] == ["unlimited", 5]


async def test_setsid_grandchild_is_gone_after_the_worker_stops(mode: Mode) -> None:
    marker = f"{3000 + int(uuid.uuid4().int % 1000)}.{uuid.uuid4().int % 10**6:06d}"
    async with hostile_worker(mode) as call:
        started = await call("daemon" if mode.bwrap else "forked", marker)
        assert started["data"] == "started", started
        with trio.fail_after(5):
            while not _pids_with(marker):
                await trio.sleep(0.05)
    assert await _wait_gone(marker) == []


async def test_killing_the_server_fails(mode: Mode) -> None:
    needs_uid_drop(mode)
    async with hostile_worker(mode) as call:
        reply = await call("kill", os.getpid())
        after = await call("whoami")
    assert _error_type(reply) in ("PermissionError", "ProcessLookupError")
    assert after["status"] == "success"  # and this test process, the server, is alive to see it


async def test_network_false_cuts_the_network(mode: Mode) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        if not mode.bwrap:
            await _refused(mode, "network = false needs bubblewrap", network=False)
            return
        async with hostile_worker(mode) as call:
            on = await call("connect", port)
        async with hostile_worker(mode, network=False) as call:
            off = await call("connect", port)
    finally:
        listener.close()
    assert on["data"] == "connected"
    assert _error_type(off) in ("ConnectionRefusedError", "OSError", "TimeoutError")


async def test_error_acks_hold_no_server_paths(mode: Mode) -> None:
    async with hostile_worker(mode) as call:
        reply = await call("boom")
    assert reply["status"] == "error"
    text = reply["message"] + reply["data"]["traceback"]
    assert str(mode.storage) not in text and "/work/" not in text
    assert 'File "main.py"' in reply["data"]["traceback"]
    assert "failed in main.py" in reply["message"]


async def test_storage_folders_are_private(mode: Mode) -> None:
    async with hostile_worker(mode):
        pass
    projects = mode.storage / "projects"
    expected = 0o700 if mode.bwrap or not ROOT else 0o711  # search-only for the dropped uid
    for path in (mode.storage, projects, projects / ".releases"):
        assert path.stat().st_mode & 0o777 == expected, path
    assert (projects / "default").stat().st_mode & 0o777 == 0o700


async def test_sandbox_outlives_idle_spawning_threads(mode: Mode) -> None:
    # The process is forked from a Trio worker thread, which exits after 10 s idle; a
    # PR_SET_PDEATHSIG bound to that thread would kill the sandbox then.
    if not mode.bwrap:
        pytest.skip("only bubblewrap uses a parent-death signal")
    async with hostile_worker(mode) as call:
        before = (await call("whoami"))["data"]
        await trio.sleep(11.5)
        after = (await call("whoami"))["data"]
    assert after == before  # the same process: nothing died and restarted
