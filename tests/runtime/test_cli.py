"""The CLI as a subprocess: run + SIGINT/SIGTERM exit 0, bad manifests exit 2, kinds, check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from switchyard.testing import free_tcp_endpoint

CLI = [sys.executable, "-m", "switchyard.runtime.cli"]


def _manifest(tmp_path: Path, endpoint: str, grace: float = 2.0) -> Path:
    path = tmp_path / "app.toml"
    path.write_text(
        f'[app]\nname = "cli-test"\ngrace_period = {grace}\n'
        f'[[actor]]\nname = "health"\nkind = "echo"\n[actor.config]\nendpoint = "{endpoint}"\n'
    )
    return path


def _wait_ready(proc: subprocess.Popen[str], timeout: float = 20.0) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "switchyard.cli" in line and "ready" in line:
            return lines
    proc.kill()
    raise AssertionError("app did not become ready:\n" + "".join(lines))


def _request(endpoint: str, body: dict) -> dict:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 3000)
    sock.connect(endpoint)
    try:
        sock.send(json.dumps(body).encode())
        return json.loads(sock.recv())
    finally:
        sock.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_run_serves_and_exits_0_within_grace_on_signal(tmp_path: Path, signum: int) -> None:
    endpoint = free_tcp_endpoint()
    proc = subprocess.Popen(
        [*CLI, "--log-format", "json", "run", str(_manifest(tmp_path, endpoint))],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _wait_ready(proc)
        assert json.loads(lines[-1])["logger"] == "switchyard.cli"
        assert _request(endpoint, {"op": "echo", "data": "你好"}) == {"ok": True, "data": "你好"}
        health = _request(endpoint, {"op": "health"})
        assert health["actors"]["health"]["state"] == "running"
        started = time.monotonic()
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 2.0 + 1.0
    finally:
        proc.kill()
        proc.wait()


def test_bad_manifest_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[app]\nname = "x"\n[[actor]]\nname = "a"\nkind = "echo"\n[actor.config]\nport = 1\n')
    for command in ("run", "check"):
        result = subprocess.run([*CLI, command, str(path)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2
        assert result.stderr.strip().count("\n") == 0
        assert f"{path}: actor 'a' [config]: unknown key 'port'" in result.stderr


def test_check_validates_without_starting(tmp_path: Path) -> None:
    endpoint = "tcp://127.0.0.1:1"  # nothing binds: check starts nothing
    result = subprocess.run(
        [*CLI, "check", str(_manifest(tmp_path, endpoint))], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "ok: app 'cli-test', 1 actor(s): health (echo)" in result.stdout


def test_kinds_lists_one_line_each() -> None:
    result = subprocess.run([*CLI, "kinds"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("echo ") for line in lines)
    assert all("unavailable" not in line for line in lines), result.stdout


def test_start_failure_exits_1(tmp_path: Path) -> None:
    endpoint = free_tcp_endpoint()
    ctx = zmq.Context.instance()
    squatter = ctx.socket(zmq.REP)
    squatter.bind(endpoint)
    try:
        result = subprocess.run(
            [*CLI, "run", str(_manifest(tmp_path, endpoint))],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ},
        )
    finally:
        squatter.close(0)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"switchyard: actor 'health' cannot bind {endpoint}: address already in use"
    )
    assert "Traceback" not in result.stderr


def test_default_app_starts_and_exits_0_on_sigint() -> None:
    """`switchyard run` with no manifest: the built-in default app (what `make run` starts)."""
    proc = subprocess.Popen([*CLI, "run"], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        _wait_ready(proc, timeout=120)
        health = _request("tcp://127.0.0.1:5590", {"op": "health"})
        assert health["ok"] is True
        states = {name: (actor["state"], actor["last_error"]) for name, actor in health["actors"].items()}
        assert all(state == "running" for state, _ in states.values()), states
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 5.0 + 2.0  # the default app's grace period, plus slack
    finally:
        proc.kill()
        proc.wait()


def test_on_start_raising_is_one_line_naming_the_actor(tmp_path: Path) -> None:
    (tmp_path / "failing_actor.py").write_text(
        "from switchyard import Actor\n"
        "class Failing(Actor):\n"
        '    """Fails to start."""\n'
        "    async def on_start(self):\n"
        "        raise RuntimeError('model missing')\n"
    )
    manifest = tmp_path / "app.toml"
    manifest.write_text('[app]\nname = "f"\n[[actor]]\nname = "broken"\nkind = "failing_actor:Failing"\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([*CLI, "run", str(manifest)], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == "switchyard: actor 'broken' cannot start: RuntimeError: model missing"
    assert "Traceback" not in result.stderr
    debug = subprocess.run(
        [*CLI, "--log-level", "DEBUG", "run", str(manifest)], capture_output=True, text=True, timeout=30, env=env
    )
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_version_apps_and_check_by_name() -> None:
    version = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("switchyard ")
    apps = subprocess.run([*CLI, "apps"], capture_output=True, text=True, timeout=60)
    names = [line.split()[0] for line in apps.stdout.splitlines()]
    assert {"default", "aipara", "inference", "robot"} <= set(names)
    check = subprocess.run([*CLI, "check", "ipc"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "ipc.toml: ok" in check.stdout, check.stderr
    unknown = subprocess.run([*CLI, "check", "no_such_app"], capture_output=True, text=True, timeout=30)
    assert unknown.returncode == 2 and "no shipped app of that name" in unknown.stderr


def test_kinds_into_a_closed_pipe_has_no_traceback() -> None:
    result = subprocess.run(
        f"{sys.executable} -m switchyard.runtime.cli kinds | head -1", shell=True, capture_output=True, text=True
    )
    assert len(result.stdout.splitlines()) == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_log_file_and_env_log_format(tmp_path: Path) -> None:
    log_file = tmp_path / "sy.log"
    endpoint = free_tcp_endpoint()
    proc = subprocess.Popen(
        [*CLI, "--log-file", str(log_file), "run", str(_manifest(tmp_path, endpoint))],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SWITCHYARD_LOG_FORMAT": "json", "LOG_LEVEL": "debug"},
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "ready" not in (log_file.read_text() if log_file.exists() else ""):
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any("ready" in r["message"] and r["logger"] == "switchyard.cli" for r in records)
    assert proc.stderr is not None and "switchyard.cli" not in proc.stderr.read()  # logs went to the file


def test_log_level_from_the_environment() -> None:
    from switchyard.runtime.logs import env_log_format, env_log_level

    assert env_log_level({}) == "INFO"
    assert env_log_level({"LOG_LEVEL": "debug"}) == "DEBUG"
    assert env_log_level({"LOG_LEVEL": "debug", "SWITCHYARD_LOG_LEVEL": "error"}) == "ERROR"
    assert env_log_format({"SWITCHYARD_LOG_FORMAT": "JSON"}) == "json"
    quiet = subprocess.run(
        [*CLI, "check", "ipc"], capture_output=True, text=True, timeout=60, env={**os.environ, "LOG_LEVEL": "ERROR"}
    )
    assert quiet.returncode == 0 and "WARNING" not in quiet.stderr


def test_socketio_bind_failure_names_actor_and_address(tmp_path: Path) -> None:
    import socket

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    manifest = tmp_path / "sio.toml"
    manifest.write_text(
        '[app]\nname = "r"\nstatus = false\n[[actor]]\nname = "socketio_bridge"\nkind = "socketio_bridge"\n'
        f'[actor.config]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    try:
        result = subprocess.run([*CLI, "run", str(manifest)], capture_output=True, text=True, timeout=60)
    finally:
        squatter.close()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"switchyard: actor 'socketio_bridge' cannot bind 127.0.0.1:{port}: address already in use"
    )
    assert "Traceback" not in result.stderr
