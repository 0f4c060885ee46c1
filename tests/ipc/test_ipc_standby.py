"""Reading tasks parked for hand-offs, and the bridge's exposure check.

A handler that blocks hands the connection's reading role away; the task that ran
it then waits to be the reader again instead of ending, so a connection whose
handlers block on every request wakes a parked task per request rather than
spawning one. What must hold: every answer still arrives, at most ``MAX_STANDBY``
tasks wait, and the end of the connection (and of the server) ends them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from switchyard.actors.ipc import IpcServerActor
from switchyard.remote import open_remote_system
from switchyard.runtime import Actor, ActorNotFound, open_system
from switchyard.transports.ipc.client import open_ipc_client
from switchyard.transports.ipc.server import SocketServer
from switchyard.transports.ipc.server_connection import MAX_STANDBY

FAST: dict[str, Any] = {"reconnect_interval": 0.05, "reconnect_max_interval": 0.2, "connect_timeout": 2.0}


def _server(path: str) -> tuple[SocketServer, set[trio.lowlevel.Task], trio.Event]:
    server = SocketServer(path, account_id="t")
    readers: set[trio.lowlevel.Task] = set()
    release = trio.Event()

    async def blocks(data: Any) -> Any:
        readers.add(trio.lowlevel.current_task())  # the first step runs in the reading task
        await trio.lowlevel.checkpoint()
        return data

    async def waits(data: Any) -> Any:
        await release.wait()
        return data

    server.register_handler("blocks", blocks)
    server.register_handler("waits", waits)
    return server, readers, release


async def test_blocking_handlers_reuse_parked_reading_tasks(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    server, readers, _ = _server(path)
    async with server, open_ipc_client(path, account_id="t", **FAST) as client:
        with trio.fail_after(10):
            for i in range(40):
                assert await client.request("blocks", {"i": i}) == {"i": i}
        # Two tasks take turns (one reads while the other finishes its handler);
        # spawning a reader per hand-off would have used 40.
        assert len(readers) <= 3
        (conn,) = server._conns.values()
        assert len(conn._standby) <= 1


async def test_parked_readers_are_bounded_and_end_with_the_connection(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    server, _, release = _server(path)
    async with server:
        async with open_ipc_client(path, account_id="t", **FAST) as client:
            results: list[Any] = []

            async def call(i: int) -> None:
                results.append(await client.request("waits", i))

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    for i in range(MAX_STANDBY + 6):
                        nursery.start_soon(call, i)
                    while server.get_stats()["in_flight"] < MAX_STANDBY + 6:
                        await trio.sleep(0.01)
                    release.set()
            assert sorted(results) == list(range(MAX_STANDBY + 6))
            (conn,) = server._conns.values()
            assert 1 <= len(conn._standby) <= MAX_STANDBY
            # Parked readers serve later hand-offs as well as new ones would.
            with trio.fail_after(5):
                for i in range(5):
                    assert await client.request("waits", i) == i
        with trio.fail_after(5):  # the client left: its connection and parked readers end
            while server._conns:
                await trio.sleep(0.01)
    assert not server._conns


class Echo(Actor):
    async def handle(self, message: Any) -> Any:
        return message


async def test_bridge_without_expose_serves_every_other_actor_and_words_misses_as_before(tmp_path: Path) -> None:
    path = str(tmp_path / "bridge.sock")
    async with open_system(name="served") as system:
        await system.spawn(Echo, name="echo")
        await system.spawn(Echo, name="another")
        await system.spawn(IpcServerActor, name="ipc", config={"address": path, "account_id": "b"})
        async with open_remote_system(path, account_id="b", **FAST) as remote:
            assert await remote.lookup("echo").ask({"x": 1}) == {"x": 1}
            assert await remote.lookup("another").ask(2) == 2
            for name in ("nobody", "ipc"):  # the bridge itself is not exposed
                with pytest.raises(ActorNotFound) as missing:
                    await remote.lookup(name).ask("hi")
                assert str(missing.value) == f"no actor named {name!r}; known: another, echo"
