"""Engine.IO 4 codec and server-session state machine (sans-IO)."""

from __future__ import annotations

import json

import pytest
from engineio import packet as ref_packet
from engineio import payload as ref_payload
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from switchyard.protocols import engineio as eio
from switchyard.protocols.engineio import Packet, PacketType, ServerSession, SessionState, Transport, UpgradeState
from switchyard.testing.socketio import engineio_frames, engineio_packets

payload_packets = st.lists(
    engineio_packets().filter(lambda p: p.binary or eio.RECORD_SEPARATOR not in p.data), min_size=1, max_size=8
)


@given(engineio_packets())
def test_frame_round_trip(packet: Packet) -> None:
    assert eio.decode_packet(eio.encode_packet(packet)) == packet


@given(payload_packets)
def test_payload_round_trip(packets: list[Packet]) -> None:
    body = eio.encode_payload(packets)
    assert eio.decode_payload(body) == packets
    assert eio.decode_payload(body.encode("utf-8")) == packets


@given(payload_packets)
def test_payload_matches_python_engineio(packets: list[Packet]) -> None:
    """The reference Python implementation reads our payloads (and we read its)."""
    body = eio.encode_payload(packets)
    ref = ref_payload.Payload()
    ref.max_decode_packets = 100
    ref.decode(body)
    assert [(p.packet_type, p.data if p.binary else None) for p in ref.packets] == [
        (int(p.type), p.data if p.binary else None) for p in packets
    ]
    assert eio.decode_payload(ref_payload.Payload(packets=ref.packets).encode()) is not None


def test_known_encodings() -> None:
    assert eio.encode_packet(Packet(PacketType.PING, "probe")) == "2probe"
    assert eio.encode_packet(Packet(PacketType.MESSAGE, b"\x01\x02")) == b"\x01\x02"
    assert eio.encode_payload([Packet(4, "hello"), Packet(4, b"\x01\x02\x03\x04")]) == "4hello\x1ebAQIDBA=="
    assert eio.decode_payload("4hello\x1e4€") == [Packet(4, "hello"), Packet(4, "€")]
    ref = ref_packet.Packet(ref_packet.MESSAGE, data="x")
    assert eio.decode_packet(ref.encode()) == Packet(4, "x")


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_decode_payload_never_crashes(body: str | bytes) -> None:
    try:
        eio.decode_payload(body)
    except eio.EngineIOError:
        pass


@given(engineio_frames())
def test_decode_packet_never_crashes(frame: str | bytes) -> None:
    try:
        eio.decode_packet(frame)
    except eio.EngineIOError:
        pass


def test_decode_rejects() -> None:
    for bad in ["", "7", "x", "b!!!", "4a\x1e", "\x1e"]:
        with pytest.raises(eio.EngineIOError):
            eio.decode_payload(bad)
    with pytest.raises(eio.EngineIOError):
        eio.decode_payload(b"\xff\xfe")
    with pytest.raises(eio.EngineIOError, match="more than 3"):
        eio.decode_payload("\x1e".join(["6"] * 4), max_packets=3)


@given(st.text(max_size=60))
def test_parse_request_never_crashes(query: str) -> None:
    try:
        eio.parse_request(query)
    except eio.EngineIOError as exc:
        body = json.loads(eio.error_body(exc.code))
        assert body["code"] == int(exc.code)


def test_parse_request() -> None:
    assert eio.parse_request("EIO=4&transport=polling&t=abc") == eio.EngineRequest(Transport.POLLING, None)
    assert eio.parse_request("EIO=4&transport=websocket&sid=x1") == eio.EngineRequest(Transport.WEBSOCKET, "x1")
    with pytest.raises(eio.EngineIOError) as info:
        eio.parse_request("EIO=3&transport=polling")
    assert info.value.code is eio.ErrorCode.UNSUPPORTED_PROTOCOL_VERSION
    with pytest.raises(eio.EngineIOError) as info:
        eio.parse_request("EIO=4&transport=flashsocket")
    assert info.value.code is eio.ErrorCode.UNKNOWN_TRANSPORT


def test_handshake_packet() -> None:
    session = ServerSession("abc", Transport.POLLING, now=0.0, ping_interval=25, ping_timeout=20, max_payload=100)
    open_packet = session.handshake().to_packet()
    assert open_packet.type is PacketType.OPEN
    assert json.loads(open_packet.data) == {
        "sid": "abc",
        "upgrades": ["websocket"],
        "pingInterval": 25000,
        "pingTimeout": 20000,
        "maxPayload": 100,
    }
    ws = ServerSession("abc", Transport.WEBSOCKET, now=0.0)
    assert json.loads(ws.handshake().to_packet().data)["upgrades"] == []


def test_heartbeat() -> None:
    s = ServerSession("s", Transport.WEBSOCKET, now=0.0, ping_interval=1.0, ping_timeout=0.5)
    assert s.next_deadline() == 1.0
    s.tick(0.9)
    assert s.take_outgoing(Transport.WEBSOCKET) == []
    s.tick(1.0)
    assert s.take_outgoing(Transport.WEBSOCKET) == [Packet(PacketType.PING)]
    assert s.next_deadline() == 1.5
    s.receive(Packet(PacketType.PONG), now=1.2)
    assert s.next_deadline() == pytest.approx(2.2)
    s.tick(2.2)
    assert s.take_outgoing(Transport.WEBSOCKET) == [Packet(PacketType.PING)]
    assert s.tick(2.69) == []
    assert s.tick(2.7) == [eio.SessionClosed("ping timeout")]
    assert s.state is SessionState.CLOSED


def test_upgrade_flow() -> None:
    s = ServerSession("s", Transport.POLLING, now=0.0)
    s.send("a")
    s.begin_poll()
    assert s.take_outgoing(Transport.POLLING) == [Packet(4, "a")]
    s.end_poll()
    s.send("b")
    assert s.receive_probe(eio.decode_packet("2probe")) == Packet(PacketType.PONG, "probe")
    assert s.take_outgoing(Transport.POLLING) == [Packet(PacketType.NOOP)]
    assert s.take_outgoing(Transport.WEBSOCKET) == []  # not upgraded yet: "b" waits
    s.receive_upgrade(eio.decode_packet("5"))
    assert s.transport is Transport.WEBSOCKET
    assert s.take_outgoing(Transport.WEBSOCKET) == [Packet(4, "b")]
    with pytest.raises(eio.EngineIOError):
        s.receive_probe(Packet(PacketType.PING, "probe"))


def test_overlapping_polls_close() -> None:
    s = ServerSession("s", Transport.POLLING, now=0.0)
    assert s.begin_poll() == []
    assert s.begin_poll() == [eio.SessionClosed("overlapping poll requests")]
    assert s.state is SessionState.CLOSED
    assert s.begin_poll() == []  # closed: nothing more happens


def test_server_close_goes_out_last() -> None:
    s = ServerSession("s", Transport.POLLING, now=0.0)
    s.send("x")
    assert s.close("bye") == [eio.SessionClosed("bye")]
    s.send("ignored")
    assert s.take_outgoing(Transport.POLLING) == [Packet(4, "x"), Packet(PacketType.CLOSE)]
    assert s.state is SessionState.CLOSED


def test_client_open_packet_is_violation() -> None:
    s = ServerSession("s", Transport.WEBSOCKET, now=0.0)
    assert s.receive(Packet(PacketType.OPEN), now=0.0) == [eio.SessionClosed("unexpected OPEN packet from the client")]
    assert s.state is SessionState.CLOSED
    assert s.receive(Packet(PacketType.MESSAGE, "late"), now=0.0) == []


class SessionMachine(RuleBasedStateMachine):
    """No message is lost, duplicated or reordered across heartbeat and upgrade."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.s = ServerSession("sid", Transport.POLLING, now=0.0, ping_interval=1.0, ping_timeout=1.0)
        self.sent: list[str] = []
        self.delivered: list[str] = []
        self.closed_events = 0

    def _collect(self, packets: list[Packet]) -> None:
        for p in packets:
            if p.type is PacketType.MESSAGE:
                self.delivered.append(p.data)

    @rule(data=st.text(max_size=5))
    def send(self, data: str) -> None:
        if self.s.state is SessionState.OPEN:
            self.sent.append(data)
        self.s.send(data)

    @rule()
    def poll(self) -> None:
        packets = self.s.take_outgoing(Transport.POLLING)
        if self.s.upgrade is not UpgradeState.NONE:
            assert packets == [Packet(PacketType.NOOP)]
        self._collect(packets)

    @rule()
    def ws_write(self) -> None:
        self._collect(self.s.take_outgoing(Transport.WEBSOCKET))

    @rule(dt=st.floats(min_value=0, max_value=1.5))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.closed_events += len(self.s.tick(self.now))

    @rule()
    def pong(self) -> None:
        self.s.receive(Packet(PacketType.PONG), now=self.now)

    @rule(data=st.text(max_size=5))
    def client_message(self, data: str) -> None:
        events = self.s.receive(Packet(PacketType.MESSAGE, data), now=self.now)
        assert events == ([eio.MessageReceived(data)] if self.s.state is SessionState.OPEN else [])

    @precondition(lambda self: self.s.upgrade is UpgradeState.NONE and self.s.state is SessionState.OPEN)
    @rule()
    def probe(self) -> None:
        assert self.s.receive_probe(Packet(PacketType.PING, "probe")) == Packet(PacketType.PONG, "probe")

    @precondition(lambda self: self.s.upgrade is UpgradeState.PROBING)
    @rule(ok=st.booleans())
    def upgrade(self, ok: bool) -> None:
        if ok:
            self.s.receive_upgrade(Packet(PacketType.UPGRADE))
        else:
            self.s.cancel_upgrade()

    @rule()
    def server_close(self) -> None:
        self.closed_events += len(self.s.close())

    @rule()
    def client_close(self) -> None:
        self.closed_events += len(self.s.receive(Packet(PacketType.CLOSE), now=self.now))

    @rule(kind=st.sampled_from([PacketType.OPEN, PacketType.UPGRADE]))
    def client_violation(self, kind: PacketType) -> None:
        events = self.s.receive(Packet(kind), now=self.now)
        self.closed_events += len(events)
        assert self.s.state is SessionState.CLOSED  # the invariant checks one close event
        assert all(isinstance(e, eio.SessionClosed) for e in events)

    @invariant()
    def in_order_once(self) -> None:
        assert self.delivered == self.sent[: len(self.delivered)]
        assert self.closed_events <= 1
        if self.s.state is SessionState.CLOSED:
            assert self.closed_events == 1
            assert self.s.pending == 0

    def teardown(self) -> None:
        if self.s.state is SessionState.OPEN:
            self.s.cancel_upgrade()  # a probe that never completes leaves polling in charge
            self._collect(self.s.take_outgoing(self.s.transport))
            assert self.delivered == self.sent


TestSessionMachine = SessionMachine.TestCase
TestSessionMachine.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
