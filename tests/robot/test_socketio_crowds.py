"""The robot Socket.IO server under crowds of hostile connections, with the real Node
socket.io-client beside them (default options: polling, then the upgrade), and the
protected mode / token paths with the same client."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio
from test_robot_node_client import node_env  # noqa: F401  (the cached npm install, a fixture)

from switchyard.runtime import build_config
from switchyard.services.robot.socketio_bridge import TOKEN_ENV, SocketIOBridgeActor, SocketIOBridgeConfig
from switchyard.testing.ports import free_tcp_port
from switchyard.testing.system import run_system
from switchyard.transports.socketio_server import SocketIOServer

HERE = Path(__file__).parent
HANDSHAKE = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def node_connect(env: dict[str, str], port: int, *args: str) -> dict[str, Any]:
    """Run connect_ack.js; its one JSON line."""
    with trio.fail_after(40):
        result = await trio.run_process(
            ["node", str(HERE / "js" / "connect_ack.js"), f"http://127.0.0.1:{port}", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    lines = result.stdout.decode().strip().splitlines()
    assert lines, result.stderr.decode()[-2000:]
    out: dict[str, Any] = json.loads(lines[-1])
    return out


class RecordingBridge(SocketIOBridgeActor):
    """The bridge, letting the test read its server's counters."""

    started: ClassVar[list[RecordingBridge]] = []

    async def on_start(self) -> None:
        await super().on_start()
        RecordingBridge.started.append(self)


@asynccontextmanager
async def open_bridge(**config: Any) -> AsyncIterator[tuple[SocketIOServer, int]]:
    """The bridge alone (``echo`` needs no worker) on a free loopback port."""
    port = free_tcp_port()
    async with run_system("crowds", grace_period=2.0) as system:
        await system.spawn(RecordingBridge, name="socketio_bridge", config={"port": port, **config})
        yield RecordingBridge.started[-1].server, port


async def open_many(port: int, count: int, first_bytes: bytes = b"") -> list[trio.SocketStream]:
    streams = []
    for _ in range(count):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        if first_bytes:
            await stream.send_all(first_bytes)
        streams.append(stream)
    return streams


async def close_all(streams: list[trio.SocketStream]) -> None:
    with trio.CancelScope(shield=True):
        for stream in streams:
            await stream.aclose()


async def drip(streams: list[trio.SocketStream]) -> None:
    """Slowloris: one more header line per connection every second, never the end."""
    while True:
        await trio.sleep(1.0)
        for stream in streams:
            try:
                await stream.send_all(b"X-Slow: 1\r\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


async def test_real_client_gets_in_past_idle_slowloris_and_unjoined_crowds(
    node_env: dict[str, str],  # noqa: F811
) -> None:
    async with open_bridge() as (server, port):
        idle = await open_many(port, 300)
        slow = await open_many(port, 500, b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n")
        unjoined = await open_many(port, 80, HANDSHAKE)  # each answers a handshake, then never joins
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drip, slow)
                with trio.fail_after(10):  # the 80 handshakes were all answered (shedding older sessions)
                    while server.engine.shed + len(server.engine.sessions) < 80:
                        await trio.sleep(0.05)
                out = await node_connect(node_env, port)
                nursery.cancel_scope.cancel()
        finally:
            await close_all(idle + slow + unjoined)
        assert out["ok"], out
        assert out["connect_ms"] < 5000 and out["ack_ms"] < 6000, out
        assert out["ack"] == {"hello": "crowd"}
        assert server.http.shed > 0  # idle and half-sent connections made room
        assert server.engine.shed >= 80 - server.config.engine.max_sessions
        assert len(server.engine.sessions) <= server.config.engine.max_sessions


async def test_unjoined_handshakes_expire() -> None:
    async with open_bridge(connect_timeout=0.5) as (server, port):
        streams = await open_many(port, 10, HANDSHAKE)
        try:
            with trio.fail_after(5):
                while len(server.engine.sessions) < 10:
                    await trio.sleep(0.02)
                while server.engine.sessions:
                    await trio.sleep(0.05)
        finally:
            await close_all(streams)


async def test_protected_mode_token_with_the_real_client(
    node_env: dict[str, str],  # noqa: F811
) -> None:
    async with open_bridge(auth_token="s3cret") as (_, port):
        refused = await node_connect(node_env, port)
        wrong = await node_connect(node_env, port, "guess")
        by_auth = await node_connect(node_env, port, "s3cret")
        by_query = await node_connect(node_env, port, "s3cret", "query")
    assert not refused["ok"] and "unauthorized" in refused["error"], refused
    assert refused["data"] == {"reason": "unauthorized"}
    assert not wrong["ok"] and "unauthorized" in wrong["error"], wrong
    assert by_auth["ok"] and by_auth["ack"] == {"hello": "crowd"}, by_auth
    assert by_query["ok"], by_query


def test_protected_mode_refuses_an_exposed_host_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(Exception) as info:
        build_config(SocketIOBridgeConfig, {"host": "0.0.0.0"}, where="actor 'socketio_bridge'")
    text = str(info.value)
    assert "\n" not in text
    assert "auth_token" in text and TOKEN_ENV in text and "allow_anonymous = true" in text
    assert build_config(SocketIOBridgeConfig, {"host": "0.0.0.0", "allow_anonymous": True}, where="x").host
    assert build_config(SocketIOBridgeConfig, {"host": "::1"}, where="x").auth_token is None  # loopback
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    config = build_config(SocketIOBridgeConfig, {"host": "0.0.0.0"}, where="x")
    assert config.auth_token == "from-env"
    assert "from-env" not in repr(config) and "from-env" not in repr(config.server_config())


def test_flat_engine_keys_still_work_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    old = {"path": "/io", "max_message_size": 5000, "ping_interval": 3.0, "cors_allowed_origins": ["http://a:*"]}
    with caplog.at_level("WARNING"):
        config = build_config(SocketIOBridgeConfig, old, where="x")
    warnings = [r for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(warnings) == 1 and "engine" in warnings[0].getMessage()
    engine = config.engine
    assert (engine.path, engine.max_payload, engine.ping_interval) == ("/io/", 5000, 3.0)
    assert engine.cors_allowed_origins == ("http://a:*",)
    nested = build_config(SocketIOBridgeConfig, {"engine": {"max_payload": 5000, "path": "/io/"}}, where="x")
    assert nested.engine.max_payload == 5000 and nested.max_message_size is None


def test_shipped_manifest_accepts_https_loopback_origins() -> None:
    from switchyard.runtime.manifest import load_manifest

    root = Path(__file__).resolve().parents[2]
    app = load_manifest(root / "switchyard" / "apps" / "robot.toml")
    (entry,) = [a for a in app.actors if a.name == "socketio_bridge"]
    origins = entry.config.engine.cors_allowed_origins
    assert "https://localhost:*" in origins and "https://127.0.0.1:*" in origins
    assert os.environ.get(TOKEN_ENV) or entry.config.auth_token is None
