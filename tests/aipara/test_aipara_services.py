"""The aipara services end to end, driven by real libzmq clients set up like the C++
client (REQ with 100 ms timeouts on the Rime channel, DEALER on the AI channel)."""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchyard.runtime import Actor, ActorError, open_system
from switchyard.services.aipara.ai_stream import AiStats, AiStreamActor, ConvertText
from switchyard.services.aipara.protocol import (
    AiBadRequest,
    BadRequest,
    Ping,
    SetOption,
    SetProperty,
    parse_ai_request,
    parse_rime_request,
)
from switchyard.services.aipara.rime_book import CommitEvent
from switchyard.services.aipara.rime_state import (
    GetClient,
    ListClients,
    QueueCommand,
    QueueResult,
    RimeStateActor,
    RimeStats,
    subscribe_events,
)
from switchyard.testing import free_tcp_endpoint
from switchyard.testing.aipara import AiClient, FakeReply, RimeClient, hostile_bodies, serve_fake_completions
from switchyard.testing.aipara import convert_message as convert

STATE = {"messege_type": "state", "is_composing": True, "timestamp": 1, "switches_option": [], "properties": []}


def commit(text: str, pinyin: str = "") -> dict[str, Any]:
    return {
        **STATE,
        "messege_type": "commit",
        "is_composing": False,
        "current_app": "gedit",
        "commit_pinyin": pinyin,
        "commit_text": text,
    }


async def in_thread(fn, *args):
    return await trio.to_thread.run_sync(fn, *args)


async def request(client: RimeClient, message) -> dict[str, Any]:
    """One round trip; like the IME, retry once after a timeout (a loaded CI box)."""
    try:
        return await in_thread(client.request, message)
    except TimeoutError:
        return await in_thread(client.request, message)


# -- the Rime state channel ------------------------------------------------------------


@attrs.frozen
class QueueFor:
    command: Any
    client_id: str | None


class Queuer(Actor):
    """Another actor that queues commands for IME clients (as a UI or the AI would)."""

    async def handle(self, message: QueueFor) -> QueueResult:
        return await self.system.lookup("rime_state").ask(QueueCommand(message.command, message.client_id))


async def start_rime(system, **config):
    endpoint = free_tcp_endpoint()
    ref = await system.spawn(RimeStateActor, name="rime_state", config={"endpoint": endpoint, **config})
    return ref, endpoint


async def test_state_gets_a_reply_in_the_client_shape():
    async with open_system("t", grace_period=1) as system:
        ref, endpoint = await start_rime(system)
        client = RimeClient(endpoint, identity=b"rime-cpp-1-rime")
        try:
            reply = await request(client, STATE)
        finally:
            client.close()
        assert reply["messege_type"] == "command_response"
        assert reply["response"] == "rime_state_received"
        assert reply["client_id"] == "rime-cpp-1-rime"
        assert reply["command_messege"] == []
        state = await ref.ask(GetClient("rime-cpp-1-rime"))
        assert state.is_composing is True and state.requests == 1


async def test_commands_queued_by_another_actor_arrive_piggybacked_once_in_order():
    async with open_system("t", grace_period=1) as system:
        _rime, endpoint = await start_rime(system)
        queuer = await system.spawn(Queuer, name="ui")
        a = RimeClient(endpoint, identity=b"a-rime")
        b = RimeClient(endpoint, identity=b"b-rime")
        try:
            await request(a, STATE)
            await request(b, STATE)
            assert await queuer.ask(QueueFor(SetOption("ascii_mode", True), "a-rime")) == QueueResult(("a-rime",))
            await queuer.ask(
                QueueFor({"command": "set_property", "property_name": "p", "property_value": "v"}, "a-rime")
            )
            everyone = await queuer.ask(QueueFor(Ping(), None))
            assert sorted(everyone.queued) == ["a-rime", "b-rime"]
            reply_a = await request(a, STATE)
            assert [c["command"] for c in reply_a["command_messege"]] == ["set_option", "set_property", "ping"]
            assert reply_a["command_messege"][0]["option_name"] == "ascii_mode"
            assert (await request(a, {"response": "pong"}))["command_messege"] == []
            reply_b = await request(b, STATE)
            assert [c["command"] for c in reply_b["command_messege"]] == ["ping"]
            with pytest.raises(ActorError, match="unknown client"):
                await queuer.ask(QueueFor(Ping(), "nobody"))
            with pytest.raises(ActorError, match="unknown command"):
                await queuer.ask(QueueFor({"command": "dance"}, "a-rime"))
        finally:
            a.close()
            b.close()


async def test_commit_updates_state_and_reaches_subscribers():
    async with open_system("t", grace_period=1) as system:
        ref, endpoint = await start_rime(system)
        client = RimeClient(endpoint, identity=b"c-rime")
        try:
            async with subscribe_events(ref, kinds=("commit", "command")) as events:
                await request(client, commit("你好世界", "nihaoshijie"))
                await request(
                    client,
                    {"messege_type": "command", "command": "paste", "timestamp": 2, "client_id": "lua_tcp_client"},
                )
                with trio.fail_after(2):
                    first = await events.receive()
                    second = await events.receive()
            assert isinstance(first, CommitEvent) and first.text == "你好世界" and first.client_id == "c-rime"
            assert second.command == "paste"
            state = await ref.ask(GetClient("c-rime"))
            assert (state.last_commit_text, state.last_commit_pinyin, state.current_app) == (
                "你好世界",
                "nihaoshijie",
                "gedit",
            )
        finally:
            client.close()


async def test_bad_requests_get_one_error_reply_and_change_nothing():
    async with open_system("t", grace_period=1) as system:
        ref, endpoint = await start_rime(system, max_message_size=1024)
        client = RimeClient(endpoint, identity=b"d-rime")
        try:
            await request(client, STATE)
            await ref.ask(QueueCommand(SetOption("x", True), "d-rime"))
            for body, words in [
                (b"{not json", "malformed JSON"),
                (b'{"messege_type":"dance"}', "unknown messege_type"),
                (b'{"messege_type":"state","is_composing":"yes"}', "'is_composing' must be a boolean"),
                (b'{"messege_type":"state","properties":{"k":"' + b"x" * 2000 + b'"}}', "too large"),
                ([b'{"messege_type":"state"}', b"{}"], "one-frame request"),
            ]:
                reply = await request(client, body)
                assert reply["messege_type"] == "command_response" and reply["response"] == "error", body
                assert words in reply["error"] and reply["command_messege"] == []
                assert reply["client_id"] == "d-rime"
            # The queued command was not lost to the bad requests.
            reply = await request(client, STATE)
            assert [c["option_name"] for c in reply["command_messege"]] == ["x"]
            state = await ref.ask(GetClient("d-rime"))
            assert state.is_composing is True and state.bad_requests >= 3
            stats = await ref.ask(RimeStats())
            assert stats["bad_requests"] == 5 and stats["clients"] == 1 and stats["commands_delivered"] == 1
        finally:
            client.close()


async def test_newer_dealer_clients_on_the_rime_port_get_the_same_replies():
    """Newer plugin builds use a DEALER with single-frame requests on this port."""
    async with open_system("t", grace_period=1) as system:
        ref, endpoint = await start_rime(system)
        client = AiClient(endpoint, identity=b"rime-cpp-9-rime", timeout_ms=1000)  # a DEALER set up like the client
        try:
            await in_thread(client.send, STATE)
            first = await in_thread(client.recv)
            await ref.ask(QueueCommand(SetOption("dealer", True), "rime-cpp-9-rime"))
            await in_thread(client.send, b"{bad")
            bad = await in_thread(client.recv)
            await in_thread(client.send, STATE)
            second = await in_thread(client.recv)
        finally:
            client.close()
        assert first["response"] == "rime_state_received" and first["client_id"] == "rime-cpp-9-rime"
        assert bad["response"] == "error" and "malformed JSON" in bad["error"]
        assert [c["option_name"] for c in second["command_messege"]] == ["dealer"]


async def test_many_clients_at_once_each_get_their_own_replies():
    async with open_system("t", grace_period=1) as system:
        ref, endpoint = await start_rime(system)
        clients = [RimeClient(endpoint, identity=f"m{i}-rime".encode()) for i in range(8)]
        replies: dict[int, list[str]] = {i: [] for i in range(8)}

        async def drive(i: int) -> None:
            for n in range(15):
                if n:
                    await ref.ask(QueueCommand(SetProperty("n", str(n)), f"m{i}-rime"))
                reply = await request(clients[i], STATE)
                assert reply["client_id"] == f"m{i}-rime"
                replies[i].extend(c["property_value"] for c in reply["command_messege"])

        try:
            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(drive, i)
        finally:
            for c in clients:
                c.close()
        for i in range(8):
            assert replies[i] == [str(n) for n in range(1, 15)]
        assert len(await ref.ask(ListClients())) == 8


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(hostile_bodies(), min_size=1, max_size=5))
async def test_rime_arbitrary_bodies_exactly_one_reply_each_and_others_unaffected(bodies):
    async with open_system("t", grace_period=1) as system:
        ref, endpoint = await start_rime(system)
        hostile = RimeClient(endpoint, identity=b"hostile-rime")
        friend = RimeClient(endpoint, identity=b"friend-rime")
        try:
            await request(friend, STATE)
            await ref.ask(QueueCommand(SetOption("keep", True), "friend-rime"))
            for body in bodies:
                reply = await request(hostile, body)
                assert reply["messege_type"] == "command_response" and isinstance(reply["command_messege"], list)
                expected_error = isinstance(parse_rime_request(body), BadRequest)
                assert (reply["response"] == "error") == expected_error
            # REQ lockstep proves one reply per request: a second reply to one request
            # would be handed to the next recv and break the shape checks above.
            reply = await request(friend, STATE)
            assert [c["option_name"] for c in reply["command_messege"]] == ["keep"]
        finally:
            hostile.close()
            friend.close()


OUTBOX_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("request"), st.integers(0, 2)),
        st.tuples(st.just("bad"), st.integers(0, 2)),
        st.tuples(st.just("queue"), st.integers(0, 2)),
        st.tuples(st.just("queue_all"), st.just(0)),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OUTBOX_OPS)
async def test_outbox_end_to_end_exactly_once_in_order_to_the_right_client(ops):
    """The outbox model run against the real service: three REQ clients, commands
    queued for one or all, bad requests in between; each reply must carry exactly
    the commands the model says, in order, and nothing may be left or repeated."""
    async with open_system("t", grace_period=1) as system:
        ref, endpoint = await start_rime(system)
        clients = [RimeClient(endpoint, identity=f"sm{i}-rime".encode()) for i in range(3)]
        queues: list[list[str]] = [[], [], []]
        delivered: list[tuple[int, str]] = []
        counter = 0
        try:
            for client in clients:
                await request(client, STATE)
            for op, i in ops:
                if op == "request":
                    reply = await request(clients[i], STATE)
                    got = [c["property_value"] for c in reply["command_messege"]]
                    assert got == queues[i]
                    delivered.extend((i, v) for v in got)
                    queues[i] = []
                elif op == "bad":
                    reply = await request(clients[i], b"\x00not json")
                    assert reply["response"] == "error" and reply["command_messege"] == []
                else:
                    counter += 1
                    value = str(counter)
                    target = None if op == "queue_all" else f"sm{i}-rime"
                    await ref.ask(QueueCommand(SetProperty("seq", value), target))
                    for j in range(3) if target is None else (i,):
                        queues[j].append(value)
            for i, client in enumerate(clients):  # drain: everything left arrives once
                reply = await request(client, STATE)
                assert [c["property_value"] for c in reply["command_messege"]] == queues[i]
                delivered.extend((i, c["property_value"]) for c in reply["command_messege"])
        finally:
            for client in clients:
                client.close()
        assert len(delivered) == len(set(delivered))


# -- the AI channel -------------------------------------------------------------------------


async def start_ai(system, **config):
    endpoint = free_tcp_endpoint()
    ref = await system.spawn(AiStreamActor, name="ai_stream", config={"endpoint": endpoint, **config})
    return ref, endpoint


def values(message: dict[str, Any], key: str) -> list[str]:
    return [c["value"] for c in message[key]]


async def test_convert_streams_cumulative_messages_until_final():
    async with open_system("t", grace_period=1) as system:
        ref, endpoint = await start_ai(system)
        client = AiClient(endpoint, identity=b"rime-cpp-1-000001")
        try:
            await in_thread(client.send, convert("nihaoshijie"))
            replies = await in_thread(client.until_final)
        finally:
            client.close()
        assert all(r["messege_type"] == "convert_result_stream" for r in replies)
        assert len(replies) >= 2 and [r["is_final"] for r in replies] == [False] * (len(replies) - 1) + [True]
        assert all(r["is_partial"] for r in replies[:-1]) and not replies[-1]["is_partial"]
        final = replies[-1]
        assert "你好世界" in values(final, "ai_candidates")
        assert values(final, "cloud_candidates")[0] == "你好"
        assert final["ai_candidates"][0] == {"value": "你好世界", "comment_name": "switchyard"}
        assert {c["comment_name"] for c in final["ai_candidates"]} == {"switchyard"}
        assert not final["is_timeout"] and not final["is_error"]
        for earlier, later in itertools.pairwise(replies):  # cumulative: nothing found is ever dropped
            assert set(values(earlier, "ai_candidates")) <= set(values(later, "ai_candidates"))
            assert set(values(earlier, "cloud_candidates")) <= set(values(later, "cloud_candidates"))
        assert final == await ref.ask(ConvertText("nihaoshijie"))


async def test_non_stream_mode_sends_only_the_final():
    async with open_system("t", grace_period=1) as system:
        _, endpoint = await start_ai(system)
        client = AiClient(endpoint)
        try:
            await in_thread(client.send, convert("xian", stream_mode=False))
            replies = await in_thread(client.until_final)
        finally:
            client.close()
        assert len(replies) == 1 and {"西安", "现"} <= set(values(replies[0], "ai_candidates"))


def slow_lines(request: dict[str, Any]) -> FakeReply:
    """A slow model: answers the pinyin back as numbered candidate lines."""
    pinyin = request["messages"][1]["content"].split("\n")[0].removeprefix("拼音：")
    return FakeReply(chunks=tuple(f"{pinyin}-{i}\n" for i in range(6)), delay=0.15)


async def test_second_convert_supersedes_the_first():
    async with serve_fake_completions(slow_lines) as server:
        async with open_system("t", grace_period=1) as system:
            ref, endpoint = await start_ai(
                system, backend="openai", openai={"base_url": server.base_url, "max_candidates": 10}
            )
            client = AiClient(endpoint, identity=b"sup-1")
            try:
                await in_thread(client.send, convert("first"))
                first = await in_thread(client.recv)
                assert values(first, "ai_candidates") == ["first-0"]
                await in_thread(client.send, convert("second"))
                replies = await in_thread(client.until_final)
                # Drained whatever was already in flight from "first"; after the
                # switch only "second" speaks, and "first" never sends a final.
                switch = next(
                    i for i, r in enumerate(replies) if any(v.startswith("second") for v in values(r, "ai_candidates"))
                )
                assert all(not r["is_final"] for r in replies[:switch])
                assert all(all(v.startswith("second") for v in values(r, "ai_candidates")) for r in replies[switch:])
                assert values(replies[-1], "ai_candidates") == [f"second-{i}" for i in range(6)]
                with pytest.raises(TimeoutError):
                    await in_thread(client.recv, 400)
            finally:
                client.close()
            stats = await ref.ask(AiStats())
            assert stats["superseded"] == 1


async def test_timeout_gives_final_with_what_exists():
    async with serve_fake_completions(slow_lines) as server:
        async with open_system("t", grace_period=1) as system:
            _, endpoint = await start_ai(system, backend="openai", openai={"base_url": server.base_url})
            client = AiClient(endpoint)
            try:
                await in_thread(client.send, convert("slow", timeout=0.5))
                replies = await in_thread(client.until_final)
            finally:
                client.close()
        final = replies[-1]
        assert final["is_timeout"] and final["is_final"] and not final["is_error"]
        got = values(final, "ai_candidates")
        assert 1 <= len(got) < 6 and got == [f"slow-{i}" for i in range(len(got))]


async def test_backend_failure_gives_final_is_error():
    async with serve_fake_completions(
        lambda req: FakeReply(status=503, error_body={"error": {"message": "no GPU"}})
    ) as server:
        async with open_system("t", grace_period=1) as system:
            _, endpoint = await start_ai(system, backend="openai", openai={"base_url": server.base_url})
            client = AiClient(endpoint)
            try:
                await in_thread(client.send, convert("nihao"))
                replies = await in_thread(client.until_final)
            finally:
                client.close()
    assert len(replies) == 1
    assert replies[0]["is_error"] and "HTTP 503: no GPU" in replies[0]["error"]


async def test_chat_on_openai_streams_chunks_with_response_key():
    async with serve_fake_completions(lambda req: FakeReply(chunks=("你好", "，", "世界"), delay=0.02)) as server:
        async with open_system("t", grace_period=1) as system:
            _, endpoint = await start_ai(system, backend="openai", openai={"base_url": server.base_url})
            client = AiClient(endpoint)
            try:
                await in_thread(
                    client.send,
                    {
                        "messege_type": "chat",
                        "commit_text": "打个招呼",
                        "assistant_id": "default",
                        "timestamp": 1,
                        "response_key": "rk-7",
                    },
                )
                replies = await in_thread(client.until_final)
            finally:
                client.close()
    assert [r["content"] for r in replies] == ["你好", "，", "世界", ""]
    assert all(r["response_key"] == "rk-7" and r["messege_type"] == "chat_result" for r in replies)
    assert replies[-1]["is_final"] and "error" not in replies[-1]
    assert server.requests[0]["messages"][1]["content"] == "打个招呼"


async def test_chat_on_local_is_a_clear_error():
    async with open_system("t", grace_period=1) as system:
        _, endpoint = await start_ai(system)
        client = AiClient(endpoint)
        try:
            await in_thread(
                client.send, {"messege_type": "chat", "commit_text": "hi", "assistant_id": "a", "response_key": "k"}
            )
            replies = await in_thread(client.until_final)
        finally:
            client.close()
    assert len(replies) == 1
    reply = replies[0]
    assert (
        reply["status"] == "error" and reply["response_key"] == "k" and "no chat model configured" in reply["error_msg"]
    )


async def test_oversized_ai_request_gets_one_error_reply():
    async with open_system("t", grace_period=1) as system:
        _, endpoint = await start_ai(system, max_message_size=256)
        client = AiClient(endpoint)
        try:
            await in_thread(client.send, convert("ni" * 200))
            reply = await in_thread(client.recv)
            with pytest.raises(TimeoutError):
                await in_thread(client.recv, 300)
        finally:
            client.close()
    # Too large to parse, but it names its kind: the error comes in the convert shape.
    assert reply["messege_type"] == "convert_result_stream" and reply["is_final"] and reply["is_error"]
    assert "exceeds the limit of 256 bytes" in reply["error"]


async def test_commits_become_prompt_context():
    async with serve_fake_completions(lambda req: FakeReply(chunks=("好\n",))) as server:
        async with open_system("t", grace_period=1) as system:
            _rime, rime_endpoint = await start_rime(system)
            ai, ai_endpoint = await start_ai(system, backend="openai", openai={"base_url": server.base_url})
            ime = RimeClient(rime_endpoint, identity=b"ctx-rime")
            client = AiClient(ai_endpoint)
            try:
                with trio.fail_after(5):
                    while True:  # the AI actor subscribes in the background
                        await request(ime, commit("上一句话"))
                        await ai.ask(ConvertText("hao"))
                        if "上一句话" in server.requests[-1]["messages"][1]["content"]:
                            break
                        await trio.sleep(0.05)
            finally:
                ime.close()
                client.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=hostile_bodies())
async def test_ai_arbitrary_bodies_never_crash_and_answer_in_shape(body):
    async with open_system("t", grace_period=1) as system:
        ref, endpoint = await start_ai(system, local={"hmm": False})
        hostile = AiClient(endpoint, identity=b"hostile")
        friend = AiClient(endpoint, identity=b"friend")
        try:
            await in_thread(hostile.send, body)
            parsed = parse_ai_request(body)
            if isinstance(parsed, AiBadRequest):
                replies = [await in_thread(hostile.recv)]
            else:
                replies = await in_thread(hostile.until_final)
            assert replies[-1].get("is_final") is True
            if isinstance(parsed, AiBadRequest):
                assert replies[0].get("is_error") or replies[0].get("status") == "error"
            # Nothing more arrives for that request: the next reply is the sentinel's.
            await in_thread(hostile.send, {"messege_type": "chat", "commit_text": "x", "response_key": "sentinel"})
            assert (await in_thread(hostile.recv))["response_key"] == "sentinel"
            await in_thread(friend.send, convert("nihao"))
            final = (await in_thread(friend.until_final))[-1]
            assert "你好" in values(final, "ai_candidates") + values(final, "cloud_candidates")
        finally:
            hostile.close()
            friend.close()
        assert (await ref.ask(AiStats()))["converts"] >= 1
