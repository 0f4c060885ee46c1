"""A throwaway ``redis-server`` on a free loopback port, for tests and benchmarks.

:func:`local_redis` starts ``/usr/bin/redis-server`` (or ``$SWITCHYARD_REDIS_SERVER``)
with its data in a temporary directory, waits until it answers PING, yields its URL
and stops it (SIGTERM, then SIGKILL after 5 s) on exit. ``appendonly=True`` turns on
AOF persistence as the meeting system runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from switchyard.services.inference.redis_queue import open_redis

__all__ = ["EventsRecorder", "RedisUnavailable", "local_redis", "redis_server_path"]


class RedisUnavailable(RuntimeError):
    """No redis-server binary, or it did not start."""


def redis_server_path() -> str | None:
    """The redis-server binary to run, or ``None``."""
    configured = os.environ.get("SWITCHYARD_REDIS_SERVER")
    if configured:
        return configured
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def local_redis(*, appendonly: bool = False, start_timeout: float = 10.0) -> AsyncIterator[str]:
    """Run a private redis-server; yields ``redis://127.0.0.1:<port>/0``."""
    binary = redis_server_path()
    if binary is None:
        raise RedisUnavailable("redis-server not found (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="sy-redis-") as tmp:
        port = _free_port()
        command = [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp, "--save", "",
            "--appendonly", "yes" if appendonly else "no", "--daemonize", "no", "--logfile", os.path.join(tmp, "log"),
        ]  # fmt: skip
        process = await trio.lowlevel.open_process(command)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            with trio.move_on_after(start_timeout) as scope:
                while True:
                    if process.poll() is not None:
                        raise RedisUnavailable(f"redis-server exited with {process.returncode}")
                    try:
                        async with open_redis(url) as client:
                            await client.ping()
                        break
                    except OSError:
                        await trio.sleep(0.05)
                    except Exception:  # coredis wraps refused connections in its own errors
                        await trio.sleep(0.05)
            if scope.cancelled_caught:
                raise RedisUnavailable(f"redis-server did not answer on port {port} within {start_timeout}s")
            yield url
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.terminate()
                    with trio.move_on_after(5):
                        await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()


class EventsRecorder:
    """Records every message on ``ai_events`` through a real SUBSCRIBE (for tests and benchmarks).

    Start :meth:`run` with ``nursery.start`` before pushing tasks (it reports started once
    subscribed), :meth:`wait_for` a count, then :meth:`stop`.
    """

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.changed = trio.Event()
        self.stopped = False

    async def run(self, url: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Polls and leaves the pubsub context normally: cancelling a coredis pubsub
        # mid-read can make its cleanup write to a closed stream.
        async with open_redis(url) as client, client.pubsub(channels=["ai_events"]) as ps:
            started = False
            while not self.stopped:
                message = await ps.get_message(timeout=0.05)
                if message is None:
                    continue
                if message["type"] == "subscribe" and not started:
                    started = True
                    task_status.started()
                elif message["type"] == "message" and isinstance(message["data"], str | bytes):
                    self.items.append(json.loads(message["data"]))
                    self.changed.set()
                    self.changed = trio.Event()

    def stop(self) -> None:
        self.stopped = True

    async def wait_for(self, n: int, timeout: float) -> list[dict[str, Any]]:
        with trio.fail_after(timeout):
            while len(self.items) < n:
                await self.changed.wait()
        return self.items
