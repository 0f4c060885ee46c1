"""Length-prefixed framing of IPC message bodies on a byte stream (sans-IO).

A frame is a 4-byte big-endian unsigned body length followed by that many body
bytes (see :mod:`switchyard.protocols.ipc` for the body). A frame whose header
announces more than ``max_frame_size`` body bytes is refused as soon as the header
is read, before any of its body is buffered, so a peer cannot make us hold more
than one frame's worth of memory.

:class:`MessageReader` is the whole receive side of one connection: feed it the
bytes a socket produced, in whatever chunks, and pull messages out::

    reader = MessageReader(max_frame_size=1 << 20)
    reader.receive_data(chunk)
    while (message := reader.next_message()) is not None:
        ...

It raises :class:`~switchyard.protocols.ipc.BadMessage` for a frame whose body is
not a valid message (the frame is consumed; the stream stays in sync, keep reading)
and :class:`FrameTooLarge` for a header over the limit (the stream cannot be
resynchronised; answer and close).
"""

from __future__ import annotations

import struct
import time
from typing import Any

from switchyard.protocols.codec import Codec
from switchyard.protocols.ipc import (
    ERR_FRAME_TOO_LARGE,
    IpcProtocolError,
    Kind,
    Message,
    decode_body,
    encode_body,
    sniff_codec,
)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "FrameDecoder",
    "FrameTooLarge",
    "MessageReader",
    "encode_frame",
    "encode_message",
    "frame_body",
]

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
MAX_LENGTH = (1 << 32) - 1
DEFAULT_MAX_FRAME_SIZE = 16 << 20

# Compact the receive buffer only once this many consumed bytes pile up at its
# front: deleting a bytearray prefix is O(remaining), so doing it per frame would
# make many small frames in one chunk quadratic.
_COMPACT_AT = 64 << 10


class FrameTooLarge(IpcProtocolError):
    """A frame (header or outgoing body) bigger than ``max_frame_size``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(ERR_FRAME_TOO_LARGE, f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


def frame_body(body: bytes, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Header + ``body``; raises :class:`FrameTooLarge` over the limit."""
    if len(body) > max_frame_size or len(body) > MAX_LENGTH:
        raise FrameTooLarge(len(body), min(max_frame_size, MAX_LENGTH))
    return HEADER.pack(len(body)) + body


def encode_frame(message: Message, codec: Codec, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """One complete frame carrying ``message``.

    Raises :class:`FrameTooLarge` or :class:`~switchyard.protocols.codec.CodecError`;
    nothing is half-written because nothing is written here.
    """
    return frame_body(encode_body(message, codec), max_frame_size)


def encode_message(
    kind: Kind, id: str, method: str, data: Any, codec: Codec, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> bytes:
    """``encode_frame(Message(kind, id, method, data), ...)`` without making the message
    (the hot path of every request and answer); the timestamp is now."""
    body = codec.encode({"kind": kind._value_, "id": id, "method": method, "data": data, "timestamp": time.time()})
    if len(body) > max_frame_size or len(body) > MAX_LENGTH:
        raise FrameTooLarge(len(body), min(max_frame_size, MAX_LENGTH))
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Splits a byte stream into frame bodies, however the bytes were chunked."""

    __slots__ = ("_broken", "_buffer", "_limit", "_start")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size < 0:
            raise ValueError("max_frame_size must be >= 0")
        # Bytes received and not yet consumed from ``_start`` on: the chunk itself
        # when it arrived into an empty buffer (no copy), else a bytearray joining
        # the chunks.
        self._buffer: bytes | bytearray = b""
        self._start = 0
        self._limit = max_frame_size
        self._broken: FrameTooLarge | None = None

    @property
    def max_frame_size(self) -> int:
        return self._limit

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame (a truncated frame at EOF)."""
        return len(self._buffer) - self._start

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        buffer = self._buffer
        if self._start == len(buffer):
            self._buffer = data if type(data) is bytes else bytes(data)
            self._start = 0
            return
        if not isinstance(buffer, bytearray):
            buffer = self._buffer = bytearray(memoryview(buffer)[self._start :])
            self._start = 0
        buffer += data

    def next_frame(self) -> bytes | None:
        """The next complete body, or ``None`` until more bytes arrive.

        After :class:`FrameTooLarge` every call raises it again: the rest of the
        stream has no trustworthy boundaries.
        """
        if self._broken is not None:
            raise self._broken
        buffer, start = self._buffer, self._start
        size = len(buffer)
        if size - start < HEADER_SIZE:
            return None
        (length,) = HEADER.unpack_from(buffer, start)
        if length > self._limit:
            self._broken = FrameTooLarge(length, self._limit)
            raise self._broken
        end = start + HEADER_SIZE + length
        if size < end:
            return None
        if not isinstance(buffer, bytearray):
            body = buffer[start + HEADER_SIZE : end]
            if end == size:
                self._buffer, self._start = b"", 0
            else:
                self._start = end
            return body
        body = bytes(memoryview(buffer)[start + HEADER_SIZE : end])
        if end == size:
            self._buffer, self._start = b"", 0
        elif end >= _COMPACT_AT:
            del buffer[:end]
            self._start = 0
        else:
            self._start = end
        return body


class MessageReader:
    """Bytes in, :class:`~switchyard.protocols.ipc.Message` out, for one connection.

    ``codec`` may be fixed up front (a client knows what it speaks); if ``None`` it
    is taken from the first body (:func:`~switchyard.protocols.ipc.sniff_codec`) and
    kept for the rest of the connection, so the other side can answer in kind.
    """

    __slots__ = ("_frames", "codec")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, codec: Codec | None = None) -> None:
        self._frames = FrameDecoder(max_frame_size)
        self.codec = codec

    @property
    def buffered(self) -> int:
        return self._frames.buffered

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._frames.feed(data)

    def next_message(self) -> Message | None:
        """The next message, ``None`` if more bytes are needed.

        Raises :class:`BadMessage` (frame consumed, keep going) or
        :class:`FrameTooLarge` (fatal for the connection). Never anything else,
        whatever the bytes.
        """
        body = self._frames.next_frame()
        if body is None:
            return None
        codec = self.codec
        if codec is None:
            codec = self.codec = sniff_codec(body)
        return decode_body(body, codec)
