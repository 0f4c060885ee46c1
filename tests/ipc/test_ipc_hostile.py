"""A client that pipelines big asks and never reads: bounded memory, dropped within ``send_timeout``."""

from __future__ import annotations

import logging
import resource
from typing import Any

import pytest
import trio

from switchyard.protocols.codec import json_codec
from switchyard.protocols.ipc import Message
from switchyard.protocols.ipc_framing import encode_frame
from switchyard.transports.ipc.client import SocketClient
from switchyard.transports.ipc.server import SocketServer

PAYLOAD = "x" * (64 << 10)
ASKS = 20_000
SEND_TIMEOUT = 1.0
MAX_IN_FLIGHT = 16


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


async def test_pipelining_client_that_never_reads_is_dropped_and_memory_stays_bounded(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="switchyard.ipc.server")
    path = str(tmp_path / "hostile.sock")
    server = SocketServer(
        path, account_id="t", enable_health_check=False, send_timeout=SEND_TIMEOUT, max_in_flight=MAX_IN_FLIGHT
    )

    async def ask(data: Any) -> Any:
        await trio.sleep(0)  # blocks like an actor ask: the hand-off path
        return data

    server.register_handler("ask", ask)
    server.register_handler("ping", lambda data: data)
    answers = 0
    sent = 0
    peak = 0
    dropped_at: float | None = None
    async with server:
        baseline = _rss_bytes()
        async with SocketClient(path, account_id="t", request_timeout=5.0) as good:
            assert await good.connect()
            async with trio.open_nursery() as nursery:

                async def hostile() -> None:
                    nonlocal sent, dropped_at
                    stream = await trio.open_unix_socket(path)
                    try:
                        for i in range(ASKS):
                            frame = encode_frame(Message.request(f"h{i}", "ask", PAYLOAD), json_codec)
                            await stream.send_all(frame)
                            sent += 1
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        dropped_at = trio.current_time()
                    finally:
                        await stream.aclose()

                async def well_behaved() -> None:
                    nonlocal answers
                    while True:
                        assert await good.request("ping", {"n": answers}) == {"n": answers}
                        answers += 1
                        await trio.sleep(0.02)

                async def watch() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, _rss_bytes() - baseline)
                        assert server.get_stats()["in_flight"] <= MAX_IN_FLIGHT
                        await trio.sleep(0.05)

                started = trio.current_time()
                nursery.start_soon(well_behaved)
                nursery.start_soon(watch)
                with trio.fail_after(SEND_TIMEOUT + 10):
                    await hostile()
                answers_when_dropped = answers
                await trio.sleep(0.3)  # the good client keeps being served after the drop
                nursery.cancel_scope.cancel()
    assert dropped_at is not None, f"the hostile client sent all {sent} asks without being dropped"
    assert dropped_at - started < SEND_TIMEOUT + 8
    assert sent < ASKS
    assert server.get_stats()["stuck_dropped"] == 1
    # Replies held for the stuck client: at most max_in_flight of 64 KiB, plus buffers.
    assert peak < 64 << 20, f"server grew by {peak / 2**20:.0f} MiB"
    assert answers_when_dropped >= 5 and answers > answers_when_dropped
    drops = [r for r in caplog.records if "dropped connection" in r.getMessage()]
    assert len(drops) == 1 and "send_timeout" in drops[0].getMessage()
    assert drops[0].exc_info is None
