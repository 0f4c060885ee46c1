"""The Rime state service's hot path gives exactly what the general path gives.

``read_rime_request`` + ``RimeStateBook.handle_quick_state`` (plain state reports) and
``encode_command_response`` must match ``parse_rime_request`` + ``RimeStateBook.handle``
+ ``json_codec.encode``: same accepted requests, same values, same error reasons, same
reply bytes, same client state afterwards.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from switchyard.protocols.codec import json_codec
from switchyard.services.aipara.commands import command_to_wire
from switchyard.services.aipara.rime_book import RimeStateBook
from switchyard.services.aipara.rime_messages import (
    BadRequest,
    StateReport,
    SwitchOption,
    command_response,
    encode_command_response,
    parse_rime_request,
    read_rime_request,
)
from switchyard.testing.aipara import hostile_bodies, json_values, outbox_commands, rime_request_dicts, state_dicts

_MAX = 2**63 - 1
_odd = json_values(3)  # any JSON value: the wrong type for most fields
_maybe: Any = st.none() | _odd


def _mostly(good: st.SearchStrategy[Any], *odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` about nine times in ten, else one of ``odd`` (so whole requests are often plain)."""
    if not odd:
        return good
    bad = st.one_of(*odd)
    return st.integers(0, 9).flatmap(lambda roll: bad if roll == 0 else good)


def _switch() -> st.SearchStrategy[Any]:
    """A switch entry as any client might send it: fields absent, null, of the right or wrong type."""
    name = {"name": _mostly(st.sampled_from(["ascii_mode", "ascii_punct", ""]) | st.text(max_size=8), _maybe)}
    fields = {
        "type": _mostly(st.just("simple") | st.text(max_size=5), _maybe),
        "state": _mostly(st.booleans(), st.integers(0, 1), _maybe),
        "state_index": _mostly(st.integers(-3, 3) | st.integers(), st.booleans(), st.floats(), _maybe),
    }
    return _mostly(
        st.fixed_dictionaries(name, optional=fields), st.fixed_dictionaries({}, optional=fields | name), _odd
    )


def _properties() -> st.SearchStrategy[Any]:
    item = st.fixed_dictionaries(
        {"name": _mostly(st.text(max_size=6), _maybe)}, optional={"value": _odd, "type": st.just("string")}
    )
    items = st.lists(_mostly(item, st.fixed_dictionaries({}, optional={"value": _odd}), _odd), max_size=3)
    return _mostly(items | st.dictionaries(st.text(max_size=6), _odd, max_size=3), _maybe)


def _stamp() -> st.SearchStrategy[Any]:
    edges = [_MAX, _MAX + 1, -_MAX, -_MAX - 1, 2.0**63, -(2.0**63), 1e300, 0.5, -0.0, float("inf"), float("nan")]
    return _mostly(
        st.integers(0, 2**53) | st.floats(0, 2**53),
        st.integers(-(2**70), 2**70),
        st.sampled_from(edges),
        st.floats(),
        st.booleans(),
        _maybe,
    )


@st.composite
def state_like(draw: st.DrawFn) -> dict[str, Any]:
    """``state`` requests near and off the plain shape the fast path takes."""
    fields = {
        "is_composing": _mostly(st.booleans(), _maybe),
        "timestamp": _stamp(),
        "switches_option": _mostly(st.lists(_switch(), max_size=3), _maybe),
        "properties": _properties(),
        "command_message": _mostly(st.none(), st.just({"command": "paste"}), _odd),
        "commit_text": st.text(max_size=4),
    }
    obj = draw(st.fixed_dictionaries({}, optional=fields))
    obj["messege_type"] = draw(_mostly(st.just("state"), st.sampled_from(["commit", "State", "command"]), _odd))
    return obj


def _body(obj: Any) -> bytes:
    """JSON as a peer may write it: NaN and Infinity included (the decoder reads them)."""
    return json.dumps(obj, ensure_ascii=False).encode()


def _as_report(quick: Any) -> StateReport:
    composing, stamp, switches, properties = quick
    return StateReport(
        is_composing=composing,
        timestamp=stamp,
        switches=tuple(SwitchOption(*s) for s in switches),
        properties=dict(properties or {}),
    )


def _same_parse(body: bytes) -> None:
    slow = parse_rime_request(body)
    fast = read_rime_request(body)
    if isinstance(fast, tuple):
        assert isinstance(slow, StateReport) and slow.kind == "state" and slow.command is None
        assert _as_report(fast) == slow
        assert _as_report(fast).properties == slow.properties
        assert all(type(s.state) is bool and type(s.state_index) is int for s in slow.switches)
    else:
        assert fast == slow
        if isinstance(fast, BadRequest):
            assert fast.reason == slow.reason  # type: ignore[union-attr]


@settings(max_examples=1000, deadline=None)
@given(state_like())
def test_fast_parse_matches_the_full_parse_near_the_plain_shape(obj):
    _same_parse(_body(obj))


def test_the_near_plain_requests_exercise_both_paths():
    taken: list[bool] = []

    @settings(max_examples=300, deadline=None, database=None)
    @given(state_like())
    def sample(obj: dict[str, Any]) -> None:
        taken.append(isinstance(read_rime_request(_body(obj)), tuple))

    sample()
    assert 0.2 < sum(taken) / len(taken) < 0.9


@settings(max_examples=300, deadline=None)
@given(hostile_bodies() | rime_request_dicts().map(json_codec.encode))
def test_fast_parse_matches_the_full_parse_on_anything(body):
    _same_parse(body)


def test_the_clients_state_report_takes_the_fast_path():
    body = json_codec.encode(
        {
            "messege_type": "state",
            "is_composing": True,
            "timestamp": 1753022593756.0,  # Lua sends floats
            "switches_option": [{"name": "ascii_punct", "type": "simple", "state": False, "state_index": 0}],
            "properties": [{"name": "keepon_chat_trigger", "type": "string", "value": ""}],
        }
    )
    fast = read_rime_request(body)
    assert fast == (True, 1753022593756, (("ascii_punct", "simple", False, 0),), {"keepon_chat_trigger": ""})
    assert type(fast[1]) is int
    # What the fast path leaves to the full one still parses there.
    embedded = json_codec.encode({"messege_type": "state", "command_message": {"command": "paste"}})
    assert isinstance(read_rime_request(embedded), StateReport)
    assert isinstance(read_rime_request(b'{"messege_type":"state","timestamp":true}'), BadRequest)
    assert isinstance(read_rime_request(b"x" * 10, max_bytes=5), BadRequest)


@settings(max_examples=300, deadline=None)
@given(
    client_id=st.text(max_size=12),
    commands=st.lists(outbox_commands(), max_size=3),
    stamp=st.integers(-(2**70), 2**70),
    response=st.sampled_from(["rime_state_received", "command_received", "pong_received", "error", "other"]),
)
def test_reply_bytes_match_the_codec(client_id, commands, stamp, response):
    wire = [command_to_wire(c, 5) for c in commands]
    expected = json_codec.encode(
        command_response(client_id=client_id, commands=wire, timestamp_ms=stamp, response=response)
    )
    assert encode_command_response(json_codec.encode(client_id), wire, stamp, response) == expected


def test_reply_bytes_fall_back_for_what_has_no_template():
    expected = json_codec.encode(command_response(client_id="c", commands=(), timestamp_ms=True, response="x"))
    assert encode_command_response(b'"c"', (), True, "x") == expected


def _serve_slow(book: RimeStateBook, client: str, body: bytes, now: float) -> bytes:
    return json_codec.encode(book.handle(client, parse_rime_request(body), now=now, wall_ms=int(now * 1000)).reply)


def _serve_fast(book: RimeStateBook, client: str, body: bytes, now: float) -> tuple[bytes, int]:
    request = read_rime_request(body)
    if isinstance(request, tuple):
        reply, delivered, _ = book.handle_quick_state(client, request, now=now, wall_ms=int(now * 1000))
        return reply, delivered
    handled = book.handle(client, request, now=now, wall_ms=int(now * 1000))
    return json_codec.encode(handled.reply), handled.delivered


_op = st.one_of(
    st.tuples(st.just("request"), st.sampled_from(["a", "b", "c"]), state_like().map(_body)),
    st.tuples(st.just("request"), st.sampled_from(["a", "b", "c"]), state_dicts().map(json_codec.encode)),
    st.tuples(st.just("request"), st.sampled_from(["a", "b"]), rime_request_dicts().map(json_codec.encode)),
    st.tuples(st.just("queue"), st.sampled_from(["a", "b", "c"]), outbox_commands()),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_op, max_size=12))
def test_book_fast_path_replies_and_state_match_the_general_path(ops):
    slow, fast = RimeStateBook(max_clients=2, max_outbox=2), RimeStateBook(max_clients=2, max_outbox=2)
    for step, (what, client, payload) in enumerate(ops):
        now = float(step)
        if what == "queue":
            outcomes = []
            for book in (slow, fast):
                try:
                    book.enqueue(client, payload, wall_ms=step)
                    outcomes.append("queued")
                except Exception as exc:
                    outcomes.append(type(exc).__name__)
            assert outcomes[0] == outcomes[1]
            continue
        before = len(slow.pending(client)) if slow.client(client) else 0
        expected = _serve_slow(slow, client, payload, now)
        reply, delivered = _serve_fast(fast, client, payload, now)
        assert reply == expected
        if delivered:
            assert delivered == before
        assert slow.clients() == fast.clients()
        assert [c.to_dict() for c in slow.clients()] == [c.to_dict() for c in fast.clients()]


def test_an_unchanged_switch_keeps_its_record_and_a_changed_one_is_replaced():
    book = RimeStateBook()
    body = b'{"messege_type":"state","switches_option":[{"name":"ascii_mode","state":true}]}'
    book.handle_quick_state("c", read_rime_request(body), now=0.0, wall_ms=0)  # type: ignore[arg-type]
    first = book.client("c").switches[0]  # type: ignore[union-attr]
    book.handle_quick_state("c", read_rime_request(body), now=1.0, wall_ms=1)  # type: ignore[arg-type]
    assert book.client("c").switches[0] is first  # type: ignore[union-attr]
    off = body.replace(b"true", b"false")
    book.handle_quick_state("c", read_rime_request(off), now=2.0, wall_ms=2)  # type: ignore[arg-type]
    switch = book.client("c").switches[0]  # type: ignore[union-attr]
    assert (switch.state, switch.state_index) == (False, 0)
