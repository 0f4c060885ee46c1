"""Newest convert wins: supersession follows arrival order, whatever order tasks start in."""

from __future__ import annotations

from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchyard.runtime import open_system
from switchyard.services.aipara.ai_stream import AiStreamActor, ConvertText
from switchyard.testing import free_tcp_endpoint
from switchyard.testing.aipara import AiClient
from switchyard.testing.aipara import convert_message as convert

PINYIN = ["nihao", "xian", "shijie", "zhongguo", "women", "pengyou", "nihaoshijie", "a"]


def send_all_then_collect(client: AiClient, bodies: list[dict[str, Any]], gaps: list[float]) -> list[dict[str, Any]]:
    """Send every convert (no reads in between), then read until a quiet 400 ms."""
    import time

    for body, gap in zip(bodies, gaps, strict=True):
        client.send(body)
        if gap:
            time.sleep(gap)
    replies: list[dict[str, Any]] = []
    while True:
        try:
            replies.append(client.recv(400))
        except TimeoutError:
            return replies


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seq=st.lists(st.sampled_from(PINYIN), min_size=2, max_size=6),
    gaps=st.lists(st.sampled_from([0.0, 0.0, 0.0, 0.001, 0.003]), min_size=6, max_size=6),
)
async def test_any_burst_of_converts_from_one_identity_gets_one_final_for_the_newest(seq, gaps):
    async with open_system("t", grace_period=1) as system:
        endpoint = free_tcp_endpoint()
        ref = await system.spawn(AiStreamActor, name="ai_stream", config={"endpoint": endpoint})
        expected = await ref.ask(ConvertText(seq[-1]))
        client = AiClient(endpoint, identity=b"burst-1")
        try:
            # Warm up so the bridge's adaptive policy sees blocking handlers and gives
            # each request a task of its own (the path where start order is not arrival order).
            for _ in range(6):
                client.send(convert("nihao"))
                await trio.to_thread.run_sync(client.until_final)
            replies = await trio.to_thread.run_sync(
                send_all_then_collect, client, [convert(p) for p in seq], gaps[: len(seq)]
            )
        finally:
            client.close()
    assert_newest_wins(replies, expected)


def assert_newest_wins(replies: list[dict[str, Any]], expected: dict[str, Any]) -> None:
    """The newest convert gets exactly one final, last of all. A stale convert still
    running when a newer one was read sends nothing more; one that had already finished
    before the newer one was read sent its final before anything of the newer one."""
    assert replies and replies[-1] == expected
    finals = [i for i, r in enumerate(replies) if r["is_final"]]
    # Everything after the last stale final belongs to the newest stream: it is cumulative
    # and only grows toward the newest final.
    start = finals[-2] + 1 if len(finals) > 1 else 0
    newest = {c["value"] for c in expected["ai_candidates"]}
    for r in replies[start:]:
        assert {c["value"] for c in r["ai_candidates"]} <= newest


async def test_fifty_back_to_back_pairs_the_newest_always_wins():
    async with open_system("t", grace_period=1) as system:
        endpoint = free_tcp_endpoint()
        ref = await system.spawn(AiStreamActor, name="ai_stream", config={"endpoint": endpoint})
        expected = await ref.ask(ConvertText("shijie"))
        client = AiClient(endpoint, identity=b"pairs-1")
        try:
            for _ in range(50):
                replies = await trio.to_thread.run_sync(
                    send_all_then_collect, client, [convert("nihao"), convert("shijie")], [0.0, 0.0]
                )
                assert_newest_wins(replies, expected)
        finally:
            client.close()
