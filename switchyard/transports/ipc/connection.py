"""One framed IPC connection over a Trio stream, shared by the server and the client.

What a caller may rely on:

* :meth:`FramedConnection.send` encodes first and only then writes, under a lock,
  so concurrent senders never interleave frames, and a message that cannot be
  encoded raises (``CodecError`` / ``FrameTooLarge``) without touching the stream.
* A write interrupted half-way (cancelled, or the peer vanished) leaves no
  trustworthy frame boundary, so the connection is closed at once; the read loop
  then ends and the owner sees the drop.
* With a ``timeout``, a send that cannot finish (waiting for other writers
  included) within that many seconds closes the connection and raises
  :class:`SendTimeout`: a peer that does not read cannot hold a writer, or the
  memory of what waits to be written, for longer.
* :meth:`read_loop` feeds every message to ``on_message`` in order, reports bad
  bodies to ``on_bad`` and keeps reading, and returns the reason it stopped (EOF,
  reset, frame too large) instead of raising.
* :meth:`keepalive` pings an idle peer every ``interval`` and returns once the peer
  has been silent (no bytes at all) for ``timeout``.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Awaitable, Callable

import trio

from switchyard.protocols.codec import Codec, json_codec
from switchyard.protocols.ipc import BadMessage, IpcProtocolError, Message
from switchyard.protocols.ipc_framing import FrameTooLarge, MessageReader, encode_frame

__all__ = ["HANDED_OFF", "FramedConnection", "SendTimeout"]

RECEIVE_SIZE = 1 << 16
#: What :meth:`FramedConnection.read_loop` returns when ``on_message`` handed the
#: reading role to another task.
HANDED_OFF = "handed off"


class SendTimeout(trio.BrokenResourceError):
    """A send did not finish within its timeout; the connection has been closed."""


class _SendGate:
    """A FIFO mutex for writers: free to take and release when nobody waits.

    ``trio.Lock`` costs about as much as encoding a small message on every send;
    this is the same parking-lot hand-over without the ownership bookkeeping.
    Take it with ``if gate.busy: await gate.wait_turn() else: gate.busy = True``.
    """

    __slots__ = ("_lot", "busy")

    def __init__(self) -> None:
        self.busy = False
        self._lot = trio.lowlevel.ParkingLot()

    async def wait_turn(self) -> None:
        # release() hands the gate straight to the task it unparks (busy stays
        # True), so no third task can slip in between. A cancelled waiter is
        # simply removed from the lot and never owns the gate.
        await self._lot.park()

    def release(self) -> None:
        if self._lot:
            self._lot.unpark()
        else:
            self.busy = False


class FramedConnection:
    """A stream plus the IPC framing state of one connection."""

    def __init__(self, stream: trio.SocketStream, *, codec: Codec | None, max_frame_size: int, label: str) -> None:
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
        #: Called (synchronously) once :meth:`close` has closed the socket.
        self.on_close: Callable[[], None] | None = None
        self._send_gate = _SendGate()
        self._fd = stream.socket.fileno()
        self._ping_ids = itertools.count(1)
        self._pings: dict[str, trio.Event] = {}

    @property
    def codec(self) -> Codec:
        """The connection's codec: fixed up front or by the peer's first body; JSON until then."""
        return self.reader.codec or json_codec

    async def send(self, message: Message, timeout: float | None = None) -> None:
        """Write one message. Raises ``CodecError``/``FrameTooLarge`` (stream untouched),
        ``trio.ClosedResourceError`` / ``trio.BrokenResourceError`` if the connection is
        gone, :class:`SendTimeout` (and closes it) past ``timeout`` seconds."""
        await self.send_frame(encode_frame(message, self.codec, self.max_frame_size), timeout)

    async def send_frame(self, frame: bytes, timeout: float | None = None) -> None:
        """Write one encoded frame.

        Fast path: with no other writer and room in the socket buffer, the frame
        goes out in one non-blocking ``os.write`` without a trip through the
        scheduler (this is the hot path of every request; Trio's ``send_all`` would
        add a checkpoint). Otherwise the writer queues for the gate and the rest
        goes through ``send_all``. May complete without a checkpoint. ``timeout``
        (seconds, ``None`` or <= 0 = none) bounds the whole slow path; past it the
        connection is closed and :class:`SendTimeout` raised.
        """
        gate = self._send_gate
        deadline = math.inf
        if gate.busy:
            if timeout is not None and timeout > 0:
                deadline = trio.current_time() + timeout
            with trio.CancelScope(deadline=deadline) as waiting:
                await gate.wait_turn()
            if waiting.cancelled_caught:  # never got the gate: nothing to release
                self.close()
                raise SendTimeout(f"connection {self.label}: send blocked for {timeout:g} s; closed")
        else:
            gate.busy = True
        timed_out = False
        try:
            if self.closed:
                raise trio.ClosedResourceError(f"connection {self.label} is closed")
            try:
                sent = os.write(self._fd, frame)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self.close()
                raise trio.BrokenResourceError(f"connection {self.label}: {exc}") from exc
            if sent < len(frame):
                if deadline == math.inf and timeout is not None and timeout > 0:
                    deadline = trio.current_time() + timeout
                with trio.CancelScope(deadline=deadline) as writing:
                    try:
                        await self.stream.send_all(memoryview(frame)[sent:])
                    except BaseException:
                        # Cut short (cancelled, timed out, or the peer vanished): the
                        # peer may hold half a frame, so no later frame could be trusted.
                        self.close()
                        raise
                timed_out = writing.cancelled_caught
        finally:
            gate.release()
        if timed_out:
            raise SendTimeout(f"connection {self.label}: send blocked for {timeout:g} s; closed")
        self.messages_out += 1

    def close(self) -> None:
        """Close the socket now (synchronously); readers and writers get ClosedResourceError."""
        if not self.closed:
            self.closed = True
            self.stream.socket.close()
            for event in self._pings.values():
                event.set()
            if self.on_close is not None:
                self.on_close()

    async def read_loop(
        self,
        on_message: Callable[[Message], Awaitable[bool | None]],
        on_bad: Callable[[IpcProtocolError], Awaitable[None]],
    ) -> str:
        """Read until the connection ends; returns why (for logs).

        If ``on_message`` returns true, this task has given the reading role away
        (it goes on with other work) and :data:`HANDED_OFF` is returned; whoever
        took the role calls ``read_loop`` again and continues with the buffered bytes.
        """
        reader, fd = self.reader, self._fd
        while True:
            # Drain first: a handshake may have left messages in the buffer. Parse
            # only while bytes are buffered (after a read they most often hold
            # exactly one message).
            while reader.buffered:
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
                if await on_message(message):
                    return HANDED_OFF
            # Wait first, then read: after a drain the socket is most often empty, so
            # this saves the read that would fail, and trio's stream layer besides.
            if self.closed:
                return "closed"
            try:
                await trio.lowlevel.wait_readable(fd)
                if self.closed:
                    return "closed"
                data = os.read(fd, RECEIVE_SIZE)
            except BlockingIOError:
                continue
            except trio.ClosedResourceError:
                return "closed"
            except OSError as exc:
                return f"reset ({exc})"
            if not data:
                if reader.buffered:
                    return f"closed by peer in the middle of a frame ({reader.buffered} bytes unread)"
                return "closed by peer"
            self.last_received = trio.current_time()
            reader.receive_data(data)

    async def answer_heartbeat(self, message: Message) -> None:
        """Answer a ping with a pong, or wake whoever waits for this pong."""
        if message.is_ping:
            await self.send(message.pong())
        else:
            self.pong_received(message)

    def pong_received(self, message: Message) -> None:
        """Wake whoever waits for this pong (:meth:`ping`), if anyone."""
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
            if self.paused:
                # Not reading: pongs would sit unread, so neither ping nor judge.
                await trio.sleep(min(interval, timeout) / 2)
                self.last_received = trio.current_time()
                continue
            now = trio.current_time()
            silent = now - self.last_received
            if silent >= timeout:
                return f"peer silent for {silent:.1f} s (heartbeat timeout {timeout:g} s)"
            if silent >= interval and now - last_ping >= interval:
                last_ping = now
                try:
                    await self.send(Message.ping(f"hb-{next(self._ping_ids)}"))
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    return "closed"
            next_ping = max(self.last_received, last_ping) + interval
            await trio.sleep_until(min(next_ping, self.last_received + timeout))
