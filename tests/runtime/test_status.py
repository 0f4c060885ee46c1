"""The status endpoint of a real app (CLI subprocess): /health, /metrics, the page in Chromium, `switchyard status`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from switchyard.testing import free_tcp_endpoint, free_tcp_port

CLI = [sys.executable, "-m", "switchyard.runtime.cli"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[str, str]]:
    endpoint = free_tcp_endpoint()
    status_port = free_tcp_port()
    manifest = tmp_path / "app.toml"
    manifest.write_text(
        f'[app]\nname = "status-test"\ngrace_period = 1\nstatus = "127.0.0.1:{status_port}"\n'
        f'[[actor]]\nname = "health"\nkind = "echo"\n[actor.config]\nendpoint = "{endpoint}"\n'
    )
    proc = subprocess.Popen([*CLI, "run", str(manifest)], stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if not line or ("switchyard.cli" in line and "ready" in line):
            break
    assert any(f"status: http://127.0.0.1:{status_port}/" in line for line in lines), "".join(lines)
    try:
        yield f"http://127.0.0.1:{status_port}/", endpoint
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        finally:
            proc.kill()


def _get(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.headers["content-type"], response.read()


def _echo(endpoint: str) -> None:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 3000)
    sock.connect(endpoint)
    try:
        sock.send(b'{"op": "echo", "x": 1}')
        sock.recv()
    finally:
        sock.close()


def test_health_metrics_and_status_command(app: tuple[str, str]) -> None:
    url, endpoint = app
    _echo(endpoint)
    kind, body = _get(url + "health")
    assert kind.startswith("application/json")
    health = json.loads(body)
    assert health["app"] == "status-test" and health["ok"] is True and health["uptime"] >= 0
    echo = health["actors"]["health"]
    assert echo["state"] == "running" and echo["mailbox_capacity"] >= 1 and echo["restarts"] == 0
    assert set(echo) >= {"mailbox_depth", "handled", "errors", "last_error"}
    kind, metrics = _get(url + "metrics")
    assert kind.startswith("text/plain")
    text = metrics.decode()
    assert 'switchyard_mailbox_capacity{actor="health"' in text
    assert 'switchyard_restarts_total{actor="health"' in text
    assert "switchyard_messages_handled_total" in text
    assert 'switchyard_request_seconds_count{actor="health",bridge="zmq_rep"} 1.0' in text
    rows = subprocess.run([*CLI, "status", url], capture_output=True, text=True, timeout=30)
    assert rows.returncode == 0, rows.stderr
    table = rows.stdout.splitlines()
    assert table[1].split()[:2] == ["ACTOR", "STATE"]
    assert any(line.split()[:2] == ["health", "running"] for line in table[2:])
    as_json = subprocess.run([*CLI, "status", "--json", url.removeprefix("http://")], capture_output=True, text=True)
    assert json.loads(as_json.stdout)["actors"]["health"]["state"] == "running"
    with pytest.raises(urllib.error.HTTPError) as info:
        _get(url + "nope")
    assert info.value.code == 404


def test_status_page_renders_the_actors_in_chromium(app: tuple[str, str], tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed")
        pytest.skip("chromium is not installed")
    url, _endpoint = app
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=3000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert 'id="actor-health"' in dom and 'id="actor-status"' in dom, dom[-2000:]
    assert "switchyard: status-test" in dom and "all actors running" in dom


def test_status_with_nothing_running_is_one_line() -> None:
    url = f"127.0.0.1:{free_tcp_port()}"
    result = subprocess.run([*CLI, "status", url], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"switchyard: no app answers at http://{url}/: [Errno 111] Connection refused"
    ]


def test_status_port_taken_is_one_line(tmp_path: Path) -> None:
    import socket

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    manifest = tmp_path / "app.toml"
    manifest.write_text(f'[app]\nname = "s"\nstatus = "127.0.0.1:{port}"\n')
    try:
        result = subprocess.run([*CLI, "run", str(manifest)], capture_output=True, text=True, timeout=30)
    finally:
        squatter.close()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"switchyard: actor 'status' cannot bind 127.0.0.1:{port}: address already in use"
    )


def test_status_can_be_switched_off(tmp_path: Path) -> None:
    from switchyard.runtime.manifest import parse_manifest

    assert parse_manifest('[app]\nname = "s"\nstatus = false\n').status is None
    on = parse_manifest('[app]\nname = "s"\n[app.status]\nhost = "127.0.0.1"\nport = 0\n').status
    assert on is not None and on.config.port == 0
    with pytest.raises(Exception, match="must be a port number"):
        parse_manifest('[app]\nname = "s"\nstatus = "127.0.0.1:99999"\n')
