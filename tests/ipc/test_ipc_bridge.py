"""Actors across processes: ipc_server exposes them, RemoteActorRef / ipc_proxy reach them."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from switchyard.actors.ipc import IpcProxyActor, IpcServerActor
from switchyard.remote import open_remote_system
from switchyard.runtime import Actor, ActorError, ActorNotFound, AskTimeout, MailboxFull, open_system
from switchyard.testing import free_tcp_endpoint

FAST = {"reconnect_interval": 0.05, "reconnect_max_interval": 0.2, "connect_timeout": 2.0}


class Counter(Actor):
    """Counts told numbers; answers asks; streams ranges; fails on request."""

    async def on_start(self) -> None:
        self.total = 0
        self.seen: list[Any] = []

    async def handle(self, message: Any) -> Any:
        if isinstance(message, int):
            self.total += message
            self.seen.append(message)
            return self.total
        if message == "total":
            return self.total
        if message == "seen":
            return self.seen
        if message == "boom":
            raise ValueError("boom!")
        if isinstance(message, dict) and "sleep" in message:
            await trio.sleep(message["sleep"])
            return "slept"
        return {"echo": message}

    async def handle_stream(self, message: Any) -> AsyncIterator[Any]:
        for i in range(message["count"]):
            if message.get("fail_at") == i:
                raise RuntimeError(f"stream broke at {i}")
            yield {"i": i}


async def start_exposing(system: Any, path: str, **config: Any) -> None:
    await system.spawn(Counter, name="counter")
    await system.spawn(Counter, name="hidden")
    await system.spawn(
        IpcServerActor,
        name="ipc",
        config={"address": path, "account_id": "bridge", "expose": ["counter"], **config},
    )


async def test_remote_ref_has_the_local_ref_semantics(tmp_path: Path) -> None:
    path = str(tmp_path / "bridge.sock")
    async with open_system(name="served") as system:
        await start_exposing(system, path)
        local = system.lookup("counter")
        async with open_remote_system(path, account_id="bridge", **FAST) as remote:
            assert await remote.names() == ["counter"]
            counter = remote.lookup("counter")
            await counter.tell(2)
            assert await counter.ask(3) == 5
            assert await counter.ask({"x": "你好"}) == {"echo": {"x": "你好"}}
            async with counter.stream({"count": 4}) as replies:
                assert [r async for r in replies] == [{"i": i} for i in range(4)]
            assert [r async for r in counter.stream({"count": 2})] == [{"i": 0}, {"i": 1}]

            # Errors: the same types (and texts) a local ref gives.
            with pytest.raises(ActorError) as remote_err:
                await counter.ask("boom")
            with pytest.raises(ActorError) as local_err:
                await local.ask("boom")
            assert str(remote_err.value) == str(local_err.value)
            assert remote_err.value.type_name == "ValueError" and remote_err.value.detail == "boom!"
            with pytest.raises(AskTimeout):
                await counter.ask({"sleep": 0.6}, timeout=0.2)
            got: list[Any] = []
            with pytest.raises(ActorError, match="stream broke at 2"):
                async with counter.stream({"count": 5, "fail_at": 2}) as replies:
                    async for r in replies:
                        got.append(r)
            for name in ("hidden", "nobody"):
                with pytest.raises(ActorNotFound, match=repr(name)):
                    await remote.lookup(name).ask("total")

            # tell_nowait: queued locally, delivered in order.
            for n in range(10, 20):
                counter.tell_nowait(n)
            with trio.fail_after(5):
                while await counter.ask("total") < 5 + sum(range(10, 20)):
                    await trio.sleep(0.01)
            assert (await local.ask("seen"))[-10:] == list(range(10, 20))
        ipc_stats = await system.lookup("ipc").ask("stats")
        assert ipc_stats["methods"]["actor.ask"]["calls"] >= 5
        assert got == [{"i": 0}, {"i": 1}]


async def test_tell_nowait_outbox_is_bounded(tmp_path: Path) -> None:
    path = str(tmp_path / "bridge.sock")
    async with open_system(name="served") as system:
        await start_exposing(system, path)
        async with open_remote_system(path, outbox_capacity=2, **FAST) as remote:
            counter = remote.lookup("counter")
            counter.tell_nowait(1)
            counter.tell_nowait(1)
            with pytest.raises(MailboxFull):
                counter.tell_nowait(1)  # nothing has had a chance to drain the outbox yet
            with trio.fail_after(5):
                while await counter.ask("total") != 2:
                    await trio.sleep(0.01)


async def test_proxy_actor_stands_in_for_the_remote_one(tmp_path: Path) -> None:
    path = str(tmp_path / "bridge.sock")
    async with open_system(name="served") as served, open_system(name="client") as client:
        # The proxy starts before its peer exists and waits for it.
        proxy = await client.spawn(
            IpcProxyActor, name="counter", config={"address": path, "actor": "counter", "ask_timeout": 5.0}
        )
        await start_exposing(served, path)
        await proxy.tell(4)
        assert await proxy.ask(1) == 5
        async with proxy.stream({"count": 3}) as replies:
            assert [r async for r in replies] == [{"i": 0}, {"i": 1}, {"i": 2}]
        with pytest.raises(ActorError, match="boom!"):
            await client.lookup("counter").ask("boom")
        assert await served.lookup("counter").ask("total") == 5


def test_an_actor_in_another_process(tmp_path: Path) -> None:
    """A real `switchyard run` process exposes its echo actor; we ask it from here."""
    sock = tmp_path / "app.sock"
    manifest = tmp_path / "app.toml"
    manifest.write_text(
        '[app]\nname = "ipc-peer"\ngrace_period = 2.0\nstatus = false\n'
        f'[[actor]]\nname = "echo"\nkind = "echo"\n[actor.config]\nendpoint = "{free_tcp_endpoint()}"\n'
        f'[[actor]]\nname = "ipc"\nkind = "ipc_server"\n[actor.config]\naddress = "{sock}"\naccount_id = "peer"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "switchyard.runtime.cli", "run", str(manifest)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the peer never bound its socket"
            time.sleep(0.05)

        async def main() -> None:
            async with open_remote_system(str(sock), account_id="peer", max_retries=20, **FAST) as remote:
                assert await remote.names() == ["echo"]
                echo = remote.lookup("echo")
                assert await echo.ask({"hello": ["world", 1]}) == {"hello": ["world", 1]}
                await echo.tell("fire and forget")
                with pytest.raises(ActorError, match="does not stream"):
                    async with echo.stream("x") as replies:
                        async for _ in replies:
                            pass

        trio.run(main)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode == 0
    assert not sock.exists()  # removed on the way out


async def test_each_remote_ask_lands_in_the_ipc_latency_histogram(tmp_path: Path) -> None:
    path = str(tmp_path / "bridge.sock")
    async with open_system(name="served") as system:
        await start_exposing(system, path)
        async with open_remote_system(path, account_id="bridge", **FAST) as remote:
            counter = remote.lookup("counter")
            for _ in range(3):
                await counter.ask(1)
        text = system.metrics.render().decode()
    assert 'switchyard_request_seconds_count{actor="ipc",bridge="ipc"} 3.0' in text
