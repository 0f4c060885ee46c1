"""The pure Rime state book: per-client state, outboxes, events, limits."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from switchyard.services.aipara.protocol import (
    BadRequest,
    ClientCommand,
    Commit,
    OutboxCommand,
    Ping,
    Pong,
    SetOption,
    SetProperty,
    StateReport,
    SwitchOption,
    command_to_wire,
)
from switchyard.services.aipara.rime_book import (
    CommandEvent,
    CommitEvent,
    OutboxFull,
    RimeStateBook,
    UnknownClient,
    client_key,
)
from switchyard.testing.aipara import outbox_commands


def test_state_then_reply_drains_outbox_in_order():
    book = RimeStateBook()
    first = book.handle("c1", StateReport(is_composing=True), now=0.0, wall_ms=100)
    assert first.reply["command_messege"] == [] and first.reply["client_id"] == "c1"
    book.enqueue("c1", SetOption("ascii_mode", True), wall_ms=101)
    book.enqueue("c1", SetProperty("p", "v"), wall_ms=102)
    assert book.client("c1").pending_commands == 2
    second = book.handle("c1", StateReport(is_composing=False), now=1.0, wall_ms=103)
    assert [c["command"] for c in second.reply["command_messege"]] == ["set_option", "set_property"]
    assert [c["timestamp"] for c in second.reply["command_messege"]] == [101, 102]
    assert second.delivered == 2
    third = book.handle("c1", Pong(), now=2.0, wall_ms=104)
    assert third.reply["command_messege"] == [] and third.reply["response"] == "pong_received"
    state = book.client("c1")
    assert state.is_composing is False and state.requests == 3 and state.pending_commands == 0


def test_bad_request_changes_nothing():
    book = RimeStateBook()
    book.handle("c1", StateReport(is_composing=True), now=0.0, wall_ms=1)
    book.enqueue("c1", Ping(), wall_ms=2)
    handled = book.handle("c1", BadRequest("malformed JSON: x"), now=5.0, wall_ms=3)
    assert handled.reply["response"] == "error" and handled.reply["error"] == "malformed JSON: x"
    assert handled.reply["command_messege"] == [] and handled.events == ()
    state = book.client("c1")
    assert state.is_composing is True and state.last_seen == 0.0 and state.pending_commands == 1
    assert state.bad_requests == 1
    # A bad request from a stranger does not create a client either.
    book.handle("stranger", BadRequest("x"), now=5.0, wall_ms=3)
    assert book.client("stranger") is None
    assert book.handle("c1", Pong(), now=6.0, wall_ms=4).reply["command_messege"][0]["command"] == "ping"


def test_commit_updates_state_and_emits_event():
    book = RimeStateBook()
    report = StateReport(
        is_composing=False,
        timestamp=77,
        switches=(SwitchOption("ascii_punct", state=True, state_index=1),),
        properties={"keepon_chat_trigger": "1"},
        commit=Commit(text="你好", pinyin="nihao", current_app="gedit"),
        command=ClientCommand("enter"),
    )
    handled = book.handle("c1", report, now=1.0, wall_ms=500)
    assert handled.events == (
        CommitEvent("c1", "你好", "nihao", "gedit", 77, 500),
        CommandEvent("c1", "enter", None, None, 500),
    )
    state = book.client("c1")
    assert (state.last_commit_text, state.last_commit_pinyin, state.current_app) == ("你好", "nihao", "gedit")
    assert state.switches[0].state is True and state.properties == {"keepon_chat_trigger": "1"}
    assert state.client_timestamp == 77
    assert state.to_dict()["switches"][0]["name"] == "ascii_punct"
    # A later state without switches keeps the known ones; new values win per name.
    book.handle("c1", StateReport(switches=(SwitchOption("full_shape"),)), now=2.0, wall_ms=501)
    assert {s.name for s in book.client("c1").switches} == {"ascii_punct", "full_shape"}


def test_limits_are_explicit():
    book = RimeStateBook(max_clients=2, max_outbox=1, client_ttl=10.0)
    with pytest.raises(UnknownClient):
        book.enqueue("nobody", Ping(), wall_ms=0)
    book.handle("a", Pong(), now=0.0, wall_ms=0)
    book.enqueue("a", Ping(), wall_ms=0)
    with pytest.raises(OutboxFull) as info:
        book.enqueue("a", Ping(), wall_ms=0)
    assert "full" in str(info.value)
    book.handle("b", Pong(), now=1.0, wall_ms=0)
    queued, refused = book.enqueue_all(SetOption("x", True), wall_ms=1)
    assert queued == ("b",) and refused == ("a",)
    handled = book.handle("c", Pong(), now=2.0, wall_ms=0)
    assert handled.evicted == ("a",)
    assert book.expire(11.5) == ("b",)
    assert [c.client_id for c in book.clients()] == ["c"]


def test_client_key():
    assert client_key(b"rime-cpp-1753022593756-rime") == "rime-cpp-1753022593756-rime"
    assert client_key(b"\x00k\x8bEg") == "0x006b8b4567"
    assert client_key(b"a\nb") == "0x610a62"
    assert client_key(b"") == "0x"


CLIENTS = ("a", "b", "c")


class OutboxMachine(RuleBasedStateMachine):
    """Every queued command is delivered exactly once, in order, to the right client,
    whatever mix of requests, bad requests, broadcasts, evictions and expiries happens."""

    def __init__(self) -> None:
        super().__init__()
        self.book = RimeStateBook(max_clients=2, max_outbox=4, client_ttl=50.0)
        self.now = 0.0
        self.wall = 1000
        self.order: list[str] = []  # known clients, least recently seen first
        self.last_seen: dict[str, float] = {}
        self.queues: dict[str, list[dict]] = {}
        self.delivered: list[tuple[str, int]] = []

    def _tick(self) -> int:
        self.wall += 1
        self.now += 1.0
        return self.wall

    @rule(client=st.sampled_from(CLIENTS), kind=st.sampled_from(["state", "commit", "command", "pong"]))
    def good_request(self, client: str, kind: str) -> None:
        wall = self._tick()
        request = {
            "state": StateReport(is_composing=True),
            "commit": StateReport(commit=Commit(text="字")),
            "command": ClientCommand("paste"),
            "pong": Pong(),
        }[kind]
        handled = self.book.handle(client, request, now=self.now, wall_ms=wall)
        expected_evicted: list[str] = []
        if client not in self.queues:
            while len(self.order) >= 2:
                victim = self.order.pop(0)
                expected_evicted.append(victim)
                del self.queues[victim]
                del self.last_seen[victim]
            self.queues[client] = []
        else:
            self.order.remove(client)
        self.order.append(client)
        self.last_seen[client] = self.now
        assert list(handled.evicted) == expected_evicted
        assert handled.reply["client_id"] == client
        assert handled.reply["command_messege"] == self.queues[client]
        self.delivered.extend((client, c["timestamp"]) for c in handled.reply["command_messege"])
        self.queues[client] = []

    @rule(client=st.sampled_from(CLIENTS))
    def bad_request(self, client: str) -> None:
        handled = self.book.handle(client, BadRequest("bad"), now=self.now, wall_ms=self._tick())
        assert handled.reply["command_messege"] == [] and handled.reply["response"] == "error"

    @rule(client=st.sampled_from(CLIENTS), command=outbox_commands())
    def enqueue(self, client: str, command: OutboxCommand) -> None:
        wall = self._tick()
        if client not in self.queues:
            with pytest.raises(UnknownClient):
                self.book.enqueue(client, command, wall_ms=wall)
        elif len(self.queues[client]) >= 4:
            with pytest.raises(OutboxFull):
                self.book.enqueue(client, command, wall_ms=wall)
        else:
            self.book.enqueue(client, command, wall_ms=wall)
            self.queues[client].append(command_to_wire(command, wall))

    @rule(command=outbox_commands())
    def enqueue_all(self, command: OutboxCommand) -> None:
        wall = self._tick()
        queued, refused = self.book.enqueue_all(command, wall_ms=wall)
        expect_queued = [c for c in self.order if len(self.queues[c]) < 4]
        expect_refused = [c for c in self.order if len(self.queues[c]) >= 4]
        assert sorted(queued) == sorted(expect_queued) and sorted(refused) == sorted(expect_refused)
        for c in expect_queued:
            self.queues[c].append(command_to_wire(command, wall))

    @precondition(lambda self: bool(self.order))
    @rule(advance=st.floats(min_value=0, max_value=80))
    def expire(self, advance: float) -> None:
        self.now += advance
        gone = self.book.expire(self.now)
        expected = [c for c in self.order if self.now - self.last_seen[c] >= 50.0]
        assert sorted(gone) == sorted(expected)
        for c in expected:
            self.order.remove(c)
            del self.queues[c]
            del self.last_seen[c]

    @invariant()
    def outboxes_match(self) -> None:
        assert [s.client_id for s in self.book.clients()] == self.order
        for client, queue in self.queues.items():
            assert list(self.book.pending(client)) == queue
            assert self.book.client(client).pending_commands == len(queue)

    @invariant()
    def each_command_delivered_once(self) -> None:
        # Wall timestamps are unique per enqueue call; a broadcast shares one across clients.
        assert len(self.delivered) == len(set(self.delivered))


OutboxMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestOutbox = OutboxMachine.TestCase
