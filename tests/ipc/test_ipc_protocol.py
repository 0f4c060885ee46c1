"""Sans-IO IPC message body and framing: round trips, chunking, hostile bytes."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from switchyard.protocols.codec import CodecError, json_codec, msgpack_codec
from switchyard.protocols.ipc import (
    ERR_BAD_MESSAGE,
    ERR_FRAME_TOO_LARGE,
    BadMessage,
    IpcProtocolError,
    Kind,
    Message,
    error_for,
    sniff_codec,
)
from switchyard.protocols.ipc_framing import (
    FrameDecoder,
    FrameTooLarge,
    MessageReader,
    encode_frame,
    frame_body,
)
from switchyard.testing.ipc import chunked, messages

CODECS = {"json": json_codec, "msgpack": msgpack_codec}


def drain(reader: MessageReader) -> tuple[list[Message], list[IpcProtocolError]]:
    """Every message and protocol error the reader yields until it needs more bytes."""
    out: list[Message] = []
    errors: list[IpcProtocolError] = []
    while True:
        try:
            message = reader.next_message()
        except FrameTooLarge as exc:
            errors.append(exc)
            return out, errors
        except BadMessage as exc:
            errors.append(exc)
            continue
        if message is None:
            return out, errors
        out.append(message)


@pytest.mark.parametrize("codec_name", ["json", "msgpack"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_messages_round_trip_whatever_the_chunking(codec_name: str, data: st.DataObject) -> None:
    codec = CODECS[codec_name]
    sent = data.draw(st.lists(messages(codec_name), min_size=1, max_size=6))
    stream = b"".join(encode_frame(m, codec) for m in sent)
    reader = MessageReader()
    received: list[Message] = []
    for piece in data.draw(chunked(stream)):
        reader.receive_data(piece)
        got, errors = drain(reader)
        assert errors == []
        received += got
    assert received == sent
    assert reader.codec is codec  # sniffed from the first body
    assert reader.buffered == 0


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.binary(max_size=64), max_size=20), limit=st.integers(0, 300))
def test_arbitrary_bytes_never_crash_the_decoder(pieces: list[bytes], limit: int) -> None:
    reader = MessageReader(max_frame_size=limit)
    for piece in pieces:
        reader.receive_data(piece)
        _, errors = drain(reader)  # anything but IpcProtocolError escapes and fails the test
        if errors and isinstance(errors[-1], FrameTooLarge):
            with pytest.raises(FrameTooLarge):  # stays broken: no boundary can be trusted
                reader.next_message()
            break


# Bodies that can never be a valid message: not JSON at all, or JSON of the wrong shape.
invalid_bodies = st.one_of(
    st.binary(max_size=40).map(lambda junk: b"\x00" + junk),
    st.sampled_from([b"", b"[]", b"1", b'"kind"', b'{"kind":"x"}', b'{"kind":"push","id":1}', b"{"]),
)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_garbage_bodies_between_valid_frames_keep_the_stream_in_sync(data: st.DataObject) -> None:
    pairs = data.draw(st.lists(st.tuples(messages("json"), invalid_bodies), min_size=1, max_size=5))
    stream = b"".join(encode_frame(m, json_codec) + frame_body(junk) for m, junk in pairs)
    reader = MessageReader()
    received: list[Message] = []
    errors: list[IpcProtocolError] = []
    for piece in data.draw(chunked(stream)):
        reader.receive_data(piece)
        got, errs = drain(reader)
        received += got
        errors += errs
    assert received == [m for m, _ in pairs]
    assert len(errors) == len(pairs)
    assert all(e.code == ERR_BAD_MESSAGE for e in errors)


def test_wire_format_is_a_big_endian_length_then_a_json_object() -> None:
    message = Message(Kind.REQUEST, "c1-1", "echo", {"text": "你好"}, 1700000000.5)
    frame = encode_frame(message, json_codec)
    body = '{"kind":"request","id":"c1-1","method":"echo","data":{"text":"你好"},"timestamp":1700000000.5}'
    assert frame == struct.pack(">I", len(body.encode())) + body.encode("utf-8")


def test_msgpack_body_is_a_map_with_the_same_keys() -> None:
    message = Message(Kind.PUSH, "", "notification", {"n": 1, "blob": b"\x00\xff"}, 2.0)
    frame = encode_frame(message, msgpack_codec)
    assert msgpack.unpackb(frame[4:], raw=False) == {
        "kind": "push",
        "id": "",
        "method": "notification",
        "data": {"n": 1, "blob": b"\x00\xff"},
        "timestamp": 2.0,
    }


def test_a_hand_written_peer_only_needs_kind() -> None:
    reader = MessageReader()
    reader.receive_data(frame_body(b'{"kind":"heartbeat","extra":[1,2]}'))
    message = reader.next_message()
    assert message == Message(Kind.HEARTBEAT, "", "", None, 0.0)
    assert message.is_ping


@pytest.mark.parametrize(
    ("body", "needle", "id", "method"),
    [
        (b"[1,2]", "map/object", "", ""),
        (b'{"id":"7","method":"add"}', "'kind'", "7", "add"),
        (b'{"kind":"shout","id":"7"}', "'kind'", "7", ""),
        (b'{"kind":"request","id":7,"method":"add"}', "'id' must be text", "", "add"),
        (b'{"kind":"request","id":"7","method":["add"]}', "'method' must be text", "7", ""),
        (b'{"kind":"request","id":"7","timestamp":"now"}', "'timestamp'", "7", ""),
        (b'{"kind":"request","id":"7","timestamp":true}', "'timestamp'", "7", ""),
        (b'{"kind":', "invalid JSON", "", ""),
        (b"{\xff}", "UTF-8", "", ""),
    ],
)
def test_invalid_bodies_name_the_problem_and_the_request(body: bytes, needle: str, id: str, method: str) -> None:
    reader = MessageReader(codec=json_codec)
    reader.receive_data(frame_body(body))
    with pytest.raises(BadMessage) as info:
        reader.next_message()
    assert needle in str(info.value)
    assert (info.value.id, info.value.method) == (id, method)
    reply = error_for(info.value)
    assert reply.kind is Kind.ERROR and reply.id == id and reply.data["code"] == ERR_BAD_MESSAGE
    assert reader.next_message() is None  # the bad frame was consumed


def test_codec_is_sniffed_from_the_first_body_and_kept() -> None:
    assert sniff_codec(b'{"kind":"push"}') is json_codec
    assert sniff_codec(b'\n {"kind":"push"}') is json_codec
    assert sniff_codec(msgpack.packb({"kind": "push"})) is msgpack_codec
    with pytest.raises(BadMessage, match="neither"):
        sniff_codec(b"GET / HTTP/1.1")
    with pytest.raises(BadMessage, match="empty"):
        sniff_codec(b"")
    reader = MessageReader()
    reader.receive_data(encode_frame(Message.push("a"), msgpack_codec))
    reader.receive_data(encode_frame(Message.push("b"), json_codec))
    assert reader.next_message().method == "a"
    with pytest.raises(BadMessage):  # JSON on a msgpack connection
        reader.next_message()


def test_oversized_header_is_refused_before_its_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    decoder.feed(struct.pack(">I", 101))
    with pytest.raises(FrameTooLarge) as info:
        decoder.next_frame()
    assert info.value.code == ERR_FRAME_TOO_LARGE and info.value.size == 101 and info.value.limit == 100
    decoder.feed(struct.pack(">I", 1) + b"x")
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_exactly_the_limit_passes_and_outgoing_frames_are_checked() -> None:
    decoder = FrameDecoder(max_frame_size=3)
    decoder.feed(frame_body(b"abc", 3))
    assert decoder.next_frame() == b"abc"
    with pytest.raises(FrameTooLarge):
        frame_body(b"abcd", 3)
    with pytest.raises(FrameTooLarge):
        encode_frame(Message.push("x", "y" * 100), json_codec, max_frame_size=50)
    with pytest.raises(CodecError):
        encode_frame(Message.push("x", b"bytes"), json_codec)


def test_many_small_frames_in_one_big_chunk() -> None:
    frames = [encode_frame(Message.request(str(i), "m", i), msgpack_codec) for i in range(20000)]
    reader = MessageReader()
    reader.receive_data(b"".join(frames) + frames[0][:3])
    got, errors = drain(reader)
    assert errors == [] and [m.data for m in got] == list(range(20000))
    assert reader.buffered == 3


def test_reply_helpers_keep_id_and_method() -> None:
    request = Message.request("42", "add", {"a": 1})
    assert request.reply({"result": 3}).to_wire()["id"] == "42"
    assert request.reply({"result": 3}).kind is Kind.RESPONSE
    error = request.reply_error("handler_error", "boom")
    assert (error.kind, error.id, error.method, error.data) == (
        Kind.ERROR,
        "42",
        "add",
        {"code": "handler_error", "message": "boom"},
    )
    ping = Message.ping("h1")
    assert ping.is_ping and not ping.pong().is_ping and ping.pong().id == "h1"


@settings(max_examples=400, deadline=None)
@given(
    first=st.sampled_from([*range(0x80, 0x90), 0xDE, 0xDF, ord("{")]),
    rest=st.binary(max_size=60),
)
def test_bodies_that_look_like_msgpack_or_json_never_crash(first: int, rest: bytes) -> None:
    reader = MessageReader()
    reader.receive_data(frame_body(bytes([first]) + rest))
    try:
        message = reader.next_message()
    except BadMessage:
        return
    assert isinstance(message, Message)


class ReaderMachine(RuleBasedStateMachine):
    """The receive side as a state machine: frames queued, bytes fed in arbitrary
    pieces, messages pulled at arbitrary times. Whatever the interleaving, what comes
    out is exactly what went in, in order, with one error per bad frame."""

    def __init__(self) -> None:
        super().__init__()
        self.reader = MessageReader(max_frame_size=4096)
        self.unsent = b""
        self.expected: list[Message | str] = []  # messages, or "bad" for a bad frame
        self.received: list[Message | str] = []

    @rule(message=messages("msgpack"))
    def queue_message(self, message: Message) -> None:
        try:
            frame = encode_frame(message, msgpack_codec, max_frame_size=4096)
        except FrameTooLarge:
            return
        self.unsent += frame
        self.expected.append(message)

    @rule(junk=st.binary(max_size=30))
    def queue_bad_frame(self, junk: bytes) -> None:
        self.unsent += frame_body(b"\xc1" + junk)  # 0xc1 is never valid msgpack
        self.expected.append("bad")

    @precondition(lambda self: self.unsent)
    @rule(size=st.integers(1, 64))
    def feed(self, size: int) -> None:
        self.reader.receive_data(self.unsent[:size])
        self.unsent = self.unsent[size:]

    @rule()
    def pull(self) -> None:
        try:
            message = self.reader.next_message()
        except BadMessage:
            self.received.append("bad")
            return
        if message is not None:
            self.received.append(message)

    @invariant()
    def what_came_out_went_in_in_order(self) -> None:
        assert self.received == self.expected[: len(self.received)]

    def teardown(self) -> None:
        self.reader.receive_data(self.unsent)
        while True:
            try:
                message = self.reader.next_message()
            except BadMessage:
                self.received.append("bad")
                continue
            if message is None:
                break
            self.received.append(message)
        assert self.received == self.expected


ReaderMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_reader_state_machine = ReaderMachine.TestCase
