"""Socket.IO 5 codec and server connection state machine (sans-IO)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from socketio import packet as ref

from switchyard.protocols import socketio as sio
from switchyard.protocols.socketio import Decoder, Packet, PacketType, ServerConnection
from switchyard.testing.socketio import json_values, socketio_event_names, socketio_packets


def decode_all(frames: list[str | bytes]) -> Packet:
    decoder = Decoder(max_attachments=1000)
    results = [decoder.feed(f) for f in frames]
    assert all(r is None for r in results[:-1])
    assert results[-1] is not None
    return results[-1]


@given(socketio_packets())
def test_round_trip(packet: Packet) -> None:
    frames = sio.encode_packet(packet)
    assert isinstance(frames[0], str)
    assert all(isinstance(f, bytes) for f in frames[1:])
    assert decode_all(frames) == packet


@given(socketio_packets())
def test_python_socketio_reads_ours(packet: Packet) -> None:
    frames = sio.encode_packet(packet)
    theirs = ref.Packet(encoded_packet=frames[0])
    for blob in frames[1:]:
        theirs.add_attachment(blob)
    assert (theirs.namespace or "/") == packet.nsp
    assert theirs.id == packet.id
    assert theirs.data == packet.data
    assert theirs.packet_type in (int(packet.type), int(packet.type) + 3)


@given(socketio_packets())
def test_we_read_python_socketio(packet: Packet) -> None:
    kind = int(packet.type)
    theirs = ref.Packet(kind, data=packet.data, namespace=packet.nsp, id=packet.id)
    encoded = theirs.encode()
    frames = encoded if isinstance(encoded, list) else [encoded]
    assert decode_all(frames) == packet


def test_known_encodings() -> None:
    enc = sio.encode_packet
    assert enc(Packet(PacketType.CONNECT)) == ["0"]
    assert enc(Packet(PacketType.CONNECT, "/admin", {"token": "t"})) == ['0/admin,{"token":"t"}']
    assert enc(Packet(PacketType.EVENT, data=["hello", 1], id=12)) == ['212["hello",1]']
    assert enc(Packet(PacketType.ACK, "/admin", ["ok"], 3)) == ['3/admin,3["ok"]']
    assert enc(Packet(PacketType.CONNECT_ERROR, data={"message": "no"})) == ['4{"message":"no"}']
    assert enc(Packet(PacketType.EVENT, data=["up", b"\x01\x02"])) == [
        '51-["up",{"_placeholder":true,"num":0}]',
        b"\x01\x02",
    ]
    assert enc(Packet(PacketType.ACK, data=[{"x": b"z"}], id=4)) == ['61-4[{"x":{"_placeholder":true,"num":0}}]', b"z"]
    assert enc(Packet(PacketType.EVENT, data=["中文"])) == ['2["中文"]']


@pytest.mark.parametrize(
    "text",
    [
        "",
        "9",
        "2",
        "2{}",
        "2[]",
        "2[1]",
        '2["connect"]',
        "3[]",
        "31{}",
        "0[]",
        '1"x"',
        "4[]",
        "5-[]",
        "5x-[]",
        "5a-",
        "2[",
        '21234567890123456["a"]',
        "2[NaN]",
        "1/a,1",
        '0/a,{"a":1}x',
    ],
)
def test_decoder_rejects(text: str) -> None:
    with pytest.raises(sio.SocketIOError):
        Decoder().feed(text)


def test_attachment_errors() -> None:
    d = Decoder(max_attachments=2)
    with pytest.raises(sio.SocketIOError, match="unexpected binary"):
        d.feed(b"x")
    with pytest.raises(sio.SocketIOError, match="more than 2"):
        d.feed('53-["a"]')
    assert d.feed('51-["a",{"_placeholder":true,"num":0}]') is None
    with pytest.raises(sio.SocketIOError, match="waiting for binary"):
        d.feed('2["a"]')
    assert d.feed('2["a"]') == Packet(PacketType.EVENT, data=["a"])  # reset after the error
    assert d.feed('51-["a",{"_placeholder":true,"num":1}]') is None
    with pytest.raises(sio.SocketIOError, match="illegal attachments"):
        d.feed(b"x")
    with pytest.raises(sio.SocketIOError, match="illegal attachments"):
        d.feed('50-["a",{"_placeholder":true,"num":0}]')


def test_namespace_query_stripped() -> None:
    assert Decoder().feed("0/admin?x=1,") == Packet(PacketType.CONNECT, "/admin")


@given(
    st.lists(
        st.one_of(
            st.text(max_size=40),
            st.binary(max_size=10),
            st.sampled_from(['51-["a",{"_placeholder":true,"num":0}]', '0{"t":1}', "1", '2["e"]']),
        ),
        max_size=8,
    )
)
def test_decoder_never_crashes(messages: list[str | bytes]) -> None:
    decoder = Decoder()
    for message in messages:
        try:
            decoder.feed(message)
        except sio.SocketIOError:
            pass


@given(st.lists(st.one_of(st.text(max_size=40), st.binary(max_size=10)), max_size=8))
def test_connection_never_crashes(messages: list[str | bytes]) -> None:
    conn = ServerConnection()
    for message in messages:
        try:
            for event in conn.receive(message):
                if isinstance(event, sio.ConnectRequested):
                    conn.accept(event.nsp, "sid")
        except sio.SocketIOError:
            pass
        assert all(isinstance(f, (str, bytes)) for f in conn.take_outgoing())


def test_connection_flow() -> None:
    conn = ServerConnection()
    assert conn.receive('2["early"]') == [sio.PacketDropped("EVENT for namespace '/', which is not connected")]
    assert conn.receive('0{"token":"s3"}') == [sio.ConnectRequested("/", {"token": "s3"})]
    conn.accept("/", "abc")
    assert conn.take_outgoing() == ['0{"sid":"abc"}']
    assert conn.receive('25["process",{"params":{}}]') == [sio.EventReceived("/", "process", [{"params": {}}], 5)]
    conn.ack("/", 5, [{"status": "success"}])
    ack_id = conn.emit("recognition_result", [{"count": 1}], want_ack=True)
    assert conn.take_outgoing() == ['35[{"status":"success"}]', f'2{ack_id}["recognition_result",{{"count":1}}]']
    assert conn.receive(f"3{ack_id}[true]") == [sio.AckReceived("/", ack_id, [True])]
    assert conn.receive(f"3{ack_id}[true]") == [sio.PacketDropped(f"ACK {ack_id} matches no emitted event")]
    assert conn.receive("0/other,") == [sio.PacketDropped("CONNECT to unknown namespace '/other' refused")]
    assert conn.take_outgoing() == ['4/other,{"message":"Invalid namespace"}']
    with pytest.raises(sio.SocketIOError):
        conn.receive("0")  # second CONNECT on "/"
    assert conn.receive("1") == [sio.ClientDisconnected("/", "client namespace disconnect")]
    assert not conn.is_connected()


def test_refuse() -> None:
    conn = ServerConnection()
    conn.receive("0")
    conn.refuse("/", "only one client at a time", {"reason": "busy"})
    assert conn.take_outgoing() == ['4{"message":"only one client at a time","data":{"reason":"busy"}}']
    with pytest.raises(sio.SocketIOError):
        conn.emit("x")
    with pytest.raises(sio.SocketIOError, match="reserved"):
        Decoder().feed('2["disconnect"]')


class ConnectionMachine(RuleBasedStateMachine):
    """Client-side model driving a ServerConnection: every emitted event arrives intact."""

    def __init__(self) -> None:
        super().__init__()
        self.conn = ServerConnection()
        self.client = Decoder(max_attachments=1000)
        self.connected = False
        self.pending = False
        self.outstanding: set[int] = set()
        self.expected: list[Packet] = []

    def _drain(self) -> None:
        for frame in self.conn.take_outgoing():
            packet = self.client.feed(frame)
            if packet is not None:
                assert packet == self.expected.pop(0)

    @precondition(lambda self: not self.connected and not self.pending)
    @rule(auth=st.one_of(st.none(), st.dictionaries(st.text(max_size=3), json_values(), max_size=2)))
    def connect(self, auth) -> None:
        frames = sio.encode_packet(Packet(PacketType.CONNECT, data=auth))
        assert self.conn.receive(frames[0]) == [sio.ConnectRequested("/", auth)]
        self.pending = True

    @precondition(lambda self: self.pending)
    @rule(ok=st.booleans())
    def answer(self, ok: bool) -> None:
        if ok:
            self.conn.accept("/", "sid1")
            self.expected.append(Packet(PacketType.CONNECT, data={"sid": "sid1"}))
        else:
            self.conn.refuse("/", "no")
            self.expected.append(Packet(PacketType.CONNECT_ERROR, data={"message": "no"}))
        self.pending, self.connected = False, ok
        self._drain()

    @rule(
        name=socketio_event_names,
        args=st.lists(json_values(binary=True), max_size=3),
        ack=st.one_of(st.none(), st.integers(0, 10**6)),
    )
    def client_event(self, name, args, ack) -> None:
        packet = Packet(PacketType.EVENT, data=[name, *args], id=ack)
        events = []
        for frame in sio.encode_packet(packet):
            events += self.conn.receive(frame)
        if self.connected:
            assert events == [sio.EventReceived("/", name, args, ack)]
        else:
            assert len(events) == 1 and isinstance(events[0], sio.PacketDropped)

    @precondition(lambda self: self.connected)
    @rule(name=socketio_event_names, args=st.lists(json_values(binary=True), max_size=3), want=st.booleans())
    def server_emit(self, name, args, want) -> None:
        ack_id = self.conn.emit(name, args, want_ack=want)
        if want:
            self.outstanding.add(ack_id)
        self.expected.append(Packet(PacketType.EVENT, data=[name, *args], id=ack_id))
        self._drain()

    @precondition(lambda self: self.outstanding)
    @rule(data=st.data())
    def client_ack(self, data) -> None:
        ack_id = data.draw(st.sampled_from(sorted(self.outstanding)))
        self.outstanding.discard(ack_id)
        events = []
        for frame in sio.encode_packet(Packet(PacketType.ACK, data=[1], id=ack_id)):
            events += self.conn.receive(frame)
        assert events == [sio.AckReceived("/", ack_id, [1])]

    @precondition(lambda self: self.connected)
    @rule()
    def client_disconnect(self) -> None:
        assert self.conn.receive("1") == [sio.ClientDisconnected("/", "client namespace disconnect")]
        self.connected = False
        self.outstanding.clear()

    @invariant()
    def consistent(self) -> None:
        assert self.conn.is_connected() == self.connected
        assert self.conn.pending_acks == len(self.outstanding)


TestConnectionMachine = ConnectionMachine.TestCase
TestConnectionMachine.settings = settings(max_examples=100, stateful_step_count=25, deadline=None)
