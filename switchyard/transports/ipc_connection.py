"""One framed IPC connection over a Trio stream, shared by the server and the client.

What a caller may rely on:

* :meth:`FramedConnection.send` encodes first and only then writes, under a lock,
  so concurrent senders never interleave frames, and a message that cannot be
  encoded raises (``CodecError`` / ``FrameTooLarge``) without touching the stream.
* A write interrupted half-way (cancelled, or the peer vanished) leaves no
  trustworthy frame boundary, so the connection is closed at once; the read loop
  then ends and the owner sees the drop.
* :meth:`read_loop` feeds every message to ``on_message`` in order, reports bad
  bodies to ``on_bad`` and keeps reading, and returns the reason it stopped (EOF,
  reset, frame too large) instead of raising.
* :meth:`keepalive` pings an idle peer every ``interval`` and returns once the peer
  has been silent (no bytes at all) for ``timeout``.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import trio

from switchyard.protocols.codec import Codec, json_codec
from switchyard.protocols.ipc import BadMessage, IpcProtocolError, Message
from switchyard.protocols.ipc_framing import FrameTooLarge, MessageReader, encode_frame

__all__ = ["FramedConnection"]

RECEIVE_SIZE = 1 << 16


class FramedConnection:
    """A stream plus the IPC framing state of one connection."""

    def __init__(
        self, stream: trio.SocketStream, *, codec: Codec | None, max_frame_size: int, label: str
    ) -> None:
        self.stream = stream
        self.label = label
        self.max_frame_size = max_frame_size
        self.reader = MessageReader(max_frame_size, codec)
        self.closed = False
        self.messages_in = 0
        self.messages_out = 0
        self.last_received = trio.current_time()
        #: Set while the owner deliberately stops reading (backpressure); silence
        #: then is ours, not the peer's, so keepalive does not count it.
        self.paused = False
        self._send_lock = trio.Lock()
        self._ping_ids = itertools.count(1)
        self._pings: dict[str, trio.Event] = {}

    @property
    def codec(self) -> Codec:
        """The connection's codec: fixed up front or by the peer's first body; JSON until then."""
        return self.reader.codec or json_codec

    async def send(self, message: Message) -> None:
        """Write one message. Raises ``CodecError``/``FrameTooLarge`` (stream untouched),
        ``trio.ClosedResourceError`` / ``trio.BrokenResourceError`` if the connection is gone."""
        await self.send_frame(encode_frame(message, self.codec, self.max_frame_size))

    async def send_frame(self, frame: bytes) -> None:
        async with self._send_lock:
            if self.closed:
                raise trio.ClosedResourceError(f"connection {self.label} is closed")
            # Raise a pending cancellation before any byte is written, so that the
            # except clause below only sees writes that may really be partial.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                await self.stream.send_all(frame)
            except BaseException:
                self.close()
                raise
        self.messages_out += 1

    def close(self) -> None:
        """Close the socket now (synchronously); readers and writers get ClosedResourceError."""
        if not self.closed:
            self.closed = True
            self.stream.socket.close()
            for event in self._pings.values():
                event.set()

    async def read_loop(
        self,
        on_message: Callable[[Message], Awaitable[None]],
        on_bad: Callable[[IpcProtocolError], Awaitable[None]],
    ) -> str:
        """Read until the connection ends; returns why (for logs)."""
        stream, reader = self.stream, self.reader
        while True:
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                return "closed" if self.closed else f"reset ({exc.__cause__ or exc})"
            if not data:
                if reader.buffered:
                    return f"closed by peer in the middle of a frame ({reader.buffered} bytes unread)"
                return "closed by peer"
            self.last_received = trio.current_time()
            reader.receive_data(data)
            while True:
                try:
                    message = reader.next_message()
                except BadMessage as exc:
                    await on_bad(exc)
                    continue
                except FrameTooLarge as exc:
                    await on_bad(exc)
                    return f"protocol error: {exc}"
                if message is None:
                    break
                self.messages_in += 1
                await on_message(message)

    async def answer_heartbeat(self, message: Message) -> None:
        """Answer a ping with a pong, or wake whoever waits for this pong."""
        if message.is_ping:
            await self.send(message.pong())
        else:
            event = self._pings.get(message.id)
            if event is not None:
                event.set()

    async def ping(self, timeout: float) -> float | None:
        """Round-trip time of one heartbeat, or ``None`` if no pong came within ``timeout``."""
        id = f"hb-{next(self._ping_ids)}"
        event = self._pings[id] = trio.Event()
        start = trio.current_time()
        try:
            with trio.move_on_after(timeout):
                await self.send(Message.ping(id))
                await event.wait()
                if not self.closed:
                    return trio.current_time() - start
            return None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return None
        finally:
            del self._pings[id]

    async def keepalive(self, interval: float, timeout: float) -> str:
        """Ping when idle for ``interval``; return once the peer is silent for ``timeout``."""
        last_ping = -float("inf")
        while True:
            now = trio.current_time()
            if self.paused:
                await trio.sleep(min(interval, timeout) / 2)
                self.last_received = max(self.last_received, trio.current_time() - interval)
                continue
            silent = now - self.last_received
            if silent >= timeout:
                return f"peer silent for {silent:.1f} s (heartbeat timeout {timeout:g} s)"
            if silent >= interval and now - last_ping >= interval:
                last_ping = now
                try:
                    await self.send(Message.ping(f"hb-{next(self._ping_ids)}"))
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    return "closed"
            wake = min(self.last_received + interval, self.last_received + timeout, last_ping + interval)
            await trio.sleep(max(wake - trio.current_time(), 0.01))
