"""The robot app against the real Node socket.io-client 4.x, installed from npm by the test."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import trio
from test_robot_bridge import make_project, wait_for_file_lines

from switchyard.testing.socketio import open_robot_app

HERE = Path(__file__).parent
MAX_EXEC = 1.0


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with socket.io-client 4.x from the npm registry and our flow script."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node/npm are not installed (CI installs them: .ci/run)")
    folder = tmp_path_factory.mktemp("node-client")
    try:
        result = subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
                str(folder),
                "socket.io-client@4",
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("npm install socket.io-client@4 timed out (registry unreachable?)")
    if result.returncode != 0:
        pytest.skip(f"npm could not install socket.io-client@4 (registry unreachable?): {result.stderr[-500:]}")
    shutil.copy(HERE / "js" / "robot_flow.js", folder / "robot_flow.js")
    return folder


async def test_node_socketio_client_full_flow(node_client: Path, tmp_path: Path) -> None:
    stop_mark = tmp_path / "stopped.txt"
    zip_path = tmp_path / "project.zip"
    zip_path.write_bytes(make_project(stop_mark))
    async with open_robot_app(tmp_path / "storage", worker={"max_execution_time": MAX_EXEC}) as (_, port):
        with trio.fail_after(120):
            result = await trio.run_process(
                ["node", str(node_client / "robot_flow.js"), f"http://127.0.0.1:{port}", str(zip_path), str(MAX_EXEC)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=str(node_client),
            )
        out = json.loads(result.stdout.decode().strip().splitlines()[-1])
        assert result.returncode == 0, (out.get("error"), result.stderr.decode()[-2000:])
        await trio.to_thread.run_sync(wait_for_file_lines, stop_mark, {"robot.stop", "module.stop"})
    assert out["version"].startswith("4.")
    assert out["first_transport"] == "polling"  # a default client starts with long-polling ...
    assert out["upgraded_transport"] == "websocket"  # ... and upgrades
    assert out["update"]["status"] == "success", out["update"]
    assert out["start"]["message"] == "Project started"
    assert out["add"] == {"status": "success", "message": "robot.add executed", "data": 42}
    assert out["fail"]["status"] == "error" and out["fail"]["message"] == "ValueError: bad value"
    assert out["pushed"] == {"result": "完成", "blob": base64.b64encode(b"\x00\x01").decode()}
    assert out["echo_binary"] == [0, 1, 254, 255]
    assert "only one client at a time" in out["second_refused"]["message"]
    assert out["second_refused"]["data"] == {"reason": "busy", "max_clients": 1}
    assert out["slow"]["status"] == "error" and "max_execution_time" in out["slow"]["message"]
    assert MAX_EXEC <= out["slow_elapsed"] < MAX_EXEC + 5
    assert out["after_slow"]["data"] == 2
    assert out["crash"]["status"] == "error" and "exit code 3" in out["crash"]["message"]
    assert out["after_crash"]["data"] == 4
    assert out["final_transport"] == "websocket"
