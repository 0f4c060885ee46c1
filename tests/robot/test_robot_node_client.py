"""The robot app against the real Node socket.io-client 4.x (installed from npm once, cached)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
import trio
from test_robot_bridge import make_project, stop_mark, wait_for_file_lines

from switchyard.testing.socketio import NodeClientUnavailable, node_socketio_client, open_robot_app

HERE = Path(__file__).parent
MAX_EXEC = 1.0


@pytest.fixture(scope="module")
def node_env() -> dict[str, str]:
    """The environment for node scripts that ``require("socket.io-client")`` (cached npm install).

    Offline, the install fails in seconds: skipped locally, a failure under ``CI=true``.
    """
    try:
        folder = node_socketio_client()
    except NodeClientUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true needs the real socket.io-client: {exc}")
        pytest.skip(str(exc))
    return {**os.environ, "NODE_PATH": str(folder / "node_modules")}


async def test_node_socketio_client_full_flow(node_env: dict[str, str], tmp_path: Path) -> None:
    zip_path = tmp_path / "project.zip"
    zip_path.write_bytes(make_project())
    async with open_robot_app(tmp_path / "storage", worker={"max_execution_time": MAX_EXEC}) as (_, port):
        with trio.fail_after(120):
            result = await trio.run_process(
                ["node", str(HERE / "js" / "robot_flow.js"), f"http://127.0.0.1:{port}", str(zip_path), str(MAX_EXEC)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=node_env,
            )
        out = json.loads(result.stdout.decode().strip().splitlines()[-1])
        assert result.returncode == 0, (out.get("error"), result.stderr.decode()[-2000:])
        await trio.to_thread.run_sync(
            wait_for_file_lines, stop_mark(tmp_path / "storage"), {"robot.stop", "module.stop"}
        )
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
