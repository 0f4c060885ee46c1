"""The shipped robot manifest as a real server process: a hostile project, then SIGKILL of the server.

A python-socketio client uploads the hostile project and starts a ``setsid`` daemon;
the server is then killed with SIGKILL (no cleanup code of ours runs). The daemon
must be gone: bubblewrap's PID namespace dies with the launcher, whose lifeline is
the dead server's pipe.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import socketio
import trio
from test_robot_sandbox import BWRAP, HOSTILE, IN_CI, SECRET, SECRET_NAME, _pids_with, _wait_gone

from switchyard.testing.ports import free_tcp_port
from switchyard.testing.socketio import project_zip

MANIFEST = Path(__file__).resolve().parents[2] / "switchyard" / "apps" / "robot.toml"

pytestmark = pytest.mark.skipif(
    BWRAP is None and not IN_CI, reason="bubblewrap is not installed here (CI=true runs this test)"
)


def _wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"the server never listened on {port}")


def _drive(port: int, marker: str) -> dict[str, Any]:
    _wait_listening(port)
    client = socketio.Client(reconnection=False)
    client.connect(f"http://127.0.0.1:{port}", wait_timeout=10)
    try:
        blob = base64.b64encode(project_zip({"main.py": HOSTILE}, folder="evil")).decode()
        out = {"update": client.call("update", {"data": blob}, timeout=60)}
        for name, args in (("daemon", [marker]), ("environ", []), ("read", ["/etc/shadow"])):
            out[name] = client.call("process", {"params": {"object": name, "args": args}}, timeout=60)
        return out
    finally:
        client.disconnect()


async def test_sigkill_of_the_server_leaves_nothing_behind(tmp_path: Path) -> None:
    port = free_tcp_port()
    text = MANIFEST.read_text()
    assert "port = 8000" in text
    app = tmp_path / "robot.toml"
    app.write_text(text.replace("port = 8000", f"port = {port}", 1))
    marker = f"{4000 + int(uuid.uuid4().int % 1000)}.{uuid.uuid4().int % 10**6:06d}"
    env = {**os.environ, SECRET_NAME: SECRET}
    async with trio.open_nursery() as nursery:
        server: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                [sys.executable, "-m", "switchyard.runtime.cli", "run", str(app)],
                cwd=str(tmp_path),
                env=env,
                check=False,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        try:
            with trio.fail_after(120):
                out = await trio.to_thread.run_sync(_drive, port, marker)
                assert out["update"]["status"] == "success", out["update"]
                assert out["daemon"]["data"] == "started", out["daemon"]
                while not _pids_with(marker):
                    await trio.sleep(0.05)
        finally:
            server.kill()  # SIGKILL: nothing of the server's own shutdown runs
    assert SECRET not in str(out["environ"])
    assert out["read"]["status"] == "error" and out["read"]["data"]["error_type"] == "PermissionError"
    assert await _wait_gone(marker) == []
    assert (tmp_path / "storage").stat().st_mode & 0o777 == 0o700
