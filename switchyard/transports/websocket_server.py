"""The server side of one WebSocket connection on Trio, over wsproto (sans-IO).

:func:`handshake` reads the upgrade request from a stream (the HTTP server replays
the request bytes) and returns a :class:`PendingWebSocket` to :meth:`~PendingWebSocket.accept`
or :meth:`~PendingWebSocket.reject`. The accepted :class:`WebSocketConnection` has no
task of its own: whoever calls :meth:`~WebSocketConnection.receive_messages` reads the
socket, in its own task, and gets every complete message that has arrived (a batch);
:meth:`~WebSocketConnection.send_messages` writes a batch of messages as one write.

What a caller may rely on:

* control frames are answered inside ``receive_messages`` (a ping gets its pong, a
  close its close reply); the peer's close, the end of the stream, a protocol error,
  bad UTF-8 in a text message or a message over ``max_message_size`` raise
  :class:`WebSocketClosed` with the close code (1002, 1007, 1009, ...), after our close
  frame is sent; memory held for a message never exceeds ``max_message_size`` plus one
  read;
* when the socket is a plain TCP/Unix socket, reads and writes that can complete
  at once do so without a trip through the Trio scheduler; ``receive_messages``
  still checkpoints every few calls, so a peer that keeps the socket full cannot
  starve other tasks, and every wait is a Trio checkpoint (cancellable);
* writes are serialised by a lock; :meth:`~WebSocketConnection.aclose` sends a close
  frame (if none was sent) and closes the stream;
* frames: after the handshake, complete unfragmented masked text/binary frames within
  the limit are parsed here (a read may hold several, and a frame may span reads);
  from the first frame of any other kind (control, fragment, over the limit, bad
  UTF-8, reserved bits, a non-minimal length) on, every byte goes through wsproto,
  which answers and closes exactly as above. Outgoing messages are framed here, the
  same bytes wsproto would write; control frames come from wsproto.
"""

from __future__ import annotations

import math
import socket as _stdsocket

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from switchyard.transports.http_server import PrefixedStream

__all__ = ["FastLock", "PendingWebSocket", "WebSocketClosed", "WebSocketConnection", "handshake"]

_READ = 65536
_CHECKPOINT_EVERY = 8  # reads that did not wait, between two forced checkpoints
_CAN_CLOSE = (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING)  # states that may send a close frame


class WebSocketClosed(Exception):
    """The connection is closed; ``code`` is the close code (1006: no close frame)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason


def _raw_socket(stream: trio.abc.Stream) -> _stdsocket.socket | None:
    """The non-blocking OS socket under a ``trio.SocketStream``, if there is one."""
    inner = stream.inner if isinstance(stream, PrefixedStream) else stream
    if isinstance(inner, trio.SocketStream):
        raw = getattr(inner.socket, "_sock", None)  # trio keeps the stdlib socket here
        if isinstance(raw, _stdsocket.socket):
            return raw
    return None


class FastLock:
    """A lock for the tasks of one Trio run: a free lock is taken with no checkpoint and
    no bookkeeping (``trio.Lock`` tracks its owner and registers it with the run on
    every acquire, which the per-message write paths pay for nothing).

    ``async with lock`` waits while it is held (a cancellable wait); not fair: a task
    that runs first may take a just-released lock before a woken waiter.
    """

    __slots__ = ("_lot", "locked")

    def __init__(self) -> None:
        self.locked = False
        self._lot = trio.lowlevel.ParkingLot()

    async def acquire(self) -> None:
        while self.locked:
            await self._lot.park()
        self.locked = True

    def release(self) -> None:
        self.locked = False
        if self._lot:
            self._lot.unpark()

    async def __aenter__(self) -> None:
        if self.locked:
            await self.acquire()
        else:
            self.locked = True

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class _Io:
    """Reads and writes on ``stream``, straight on the OS socket when they need not wait."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.prefix = stream.take_prefix() if isinstance(stream, PrefixedStream) else b""
        self.raw = _raw_socket(stream)
        self._unwaited = 0
        self.write_lock = FastLock()

    async def read(self) -> bytes:
        if self.prefix:
            data, self.prefix = self.prefix, b""
            return data
        raw = self.raw
        if raw is None:
            return bytes(await self.stream.receive_some(_READ))
        self._unwaited += 1
        if self._unwaited >= _CHECKPOINT_EVERY:
            self._unwaited = 0
            await trio.lowlevel.checkpoint()
        while True:
            try:
                return raw.recv(_READ)
            except BlockingIOError:
                self._unwaited = 0
                await trio.lowlevel.wait_readable(raw)
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc

    async def write(self, data: bytes, timeout: float | None = None) -> bool:
        """Write all of ``data`` (in order with other writes); False if ``timeout``
        seconds passed first, waiting for the lock included (the stream may then be
        left mid-frame: the caller drops the connection)."""
        if not data:
            return True
        lock, raw = self.write_lock, self.raw
        if lock.locked or raw is None:
            return await self._write_slow(data, timeout, locked=False)
        try:
            sent = raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        if sent == len(data):
            return True
        lock.locked = True  # no checkpoint since the check above: the lock is still free
        return await self._write_slow(memoryview(data)[sent:], timeout, locked=True)

    async def _write_slow(self, data: bytes | memoryview, timeout: float | None, *, locked: bool) -> bool:
        lock = self.write_lock
        with trio.move_on_after(math.inf if timeout is None else timeout):
            try:
                if not locked:
                    await lock.acquire()
                    locked = True
                await self.stream.send_all(data)
                return True
            finally:
                if locked:
                    lock.release()
        return False


class PendingWebSocket:
    """A WebSocket handshake read but not yet answered."""

    def __init__(self, io: _Io, ws: WSConnection, request: Request, max_message_size: int) -> None:
        self._io = io
        self._ws = ws
        self.request = request
        self._max = max_message_size

    async def accept(self) -> WebSocketConnection:
        await self._io.write(self._ws.send(AcceptConnection()))
        return WebSocketConnection(self._io, self._ws, self._max)

    async def reject(self, status: int, headers: tuple[tuple[bytes, bytes], ...] = (), body: bytes = b"") -> None:
        """Answer with an HTTP error (``body`` may be empty); the caller closes the stream."""
        data = self._ws.send(RejectConnection(status_code=status, headers=list(headers), has_body=bool(body)))
        if body:
            data += self._ws.send(RejectData(data=body, body_finished=True))
        try:
            await self._io.write(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def handshake(stream: trio.abc.Stream, *, max_message_size: int) -> PendingWebSocket:
    """Read the upgrade request from ``stream``; raises :class:`WebSocketClosed` if it is not one."""
    io = _Io(stream)
    ws = WSConnection(ConnectionType.SERVER)
    while True:
        data = await io.read()
        if not data:
            raise WebSocketClosed(1006, "stream ended during the handshake")
        try:
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, Request):
                    return PendingWebSocket(io, ws, event, max_message_size)
                raise WebSocketClosed(1002, f"unexpected {type(event).__name__} during the handshake")
        except RemoteProtocolError as exc:
            body = f"bad websocket handshake: {exc}".encode()
            head = f"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {len(body)}\r\n"
            try:
                await io.write(head.encode() + b"connection: close\r\n\r\n" + body)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            raise WebSocketClosed(1002, str(exc)) from None


class WebSocketConnection:
    """An accepted WebSocket (see the module docstring)."""

    def __init__(self, io: _Io, ws: WSConnection, max_message_size: int) -> None:
        self._io = io
        self._ws = ws
        self.max_message_size = max_message_size
        self._text: list[str] = []
        self._binary: list[bytes] = []
        self._size = 0
        self._close_sent = False
        self.closed: WebSocketClosed | None = None
        # frame parsing here until the first frame wsproto must see (see module doc)
        self._fast = True
        self._tail: list[bytes] = []  # an incomplete frame, in pieces
        self._tail_len = 0
        self._tail_need = 0  # bytes it takes to parse it further

    async def receive_messages(self) -> list[str | bytes]:
        """At least one complete message (every one that has arrived, in order).

        Raises :class:`WebSocketClosed` once the connection is closed (see module doc).
        """
        if self.closed is not None:
            raise self.closed
        while True:
            try:
                data = await self._io.read()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise self._ended(WebSocketClosed(1006, str(exc) or "connection lost")) from None
            messages: list[str | bytes] = []
            if self._fast:
                if data:
                    messages, rest = self._parse_fast(data)
                    if rest is None:
                        if messages:
                            return messages
                        continue
                else:
                    rest = b"".join(self._tail)
                    self._tail.clear()
                self._fast = False  # wsproto reads from here on, from a frame boundary
                if rest:
                    self._ws.receive_data(rest)
                if not data:
                    self._ws.receive_data(None)
            else:
                self._ws.receive_data(data or None)
            out = b""
            for event in self._ws.events():
                if isinstance(event, Message):
                    done = self._add(event)
                    if done is not None:
                        messages.append(done)
                    elif self._size > self.max_message_size:
                        out += self._close_frame(1009, f"message larger than {self.max_message_size} bytes")
                        await self._write_quietly(out)
                        raise self._ended(WebSocketClosed(1009, "message too big"))
                elif isinstance(event, Ping):
                    out += self._ws.send(event.response())
                elif isinstance(event, CloseConnection):
                    # no reply when the stream ended (wsproto is CLOSED, reports 1006)
                    if not self._close_sent and self._ws.state in _CAN_CLOSE:
                        self._close_sent = True
                        out += self._ws.send(event.response())
                    await self._write_quietly(out)
                    raise self._ended(WebSocketClosed(event.code, event.reason or ""))
            if out:
                await self._write_quietly(out)
            if messages:
                return messages
            if not data:
                raise self._ended(WebSocketClosed(1006, "connection lost"))

    def _parse_fast(self, data: bytes) -> tuple[list[str | bytes], bytes | None]:
        """The messages of the simple complete frames at the front of what has arrived,
        and the bytes from the first frame wsproto must see on (None: there is none;
        an incomplete frame at the end waits in ``_tail``)."""
        if self._tail:
            self._tail.append(data)
            self._tail_len += len(data)
            if self._tail_len < self._tail_need:
                return [], None
            data = b"".join(self._tail)
            self._tail.clear()
        messages: list[str | bytes] = []
        pos, end, limit = 0, len(data), self.max_message_size
        need = 0
        while pos < end:
            left = end - pos
            if left < 2:
                need = 2
                break
            b0, b1 = data[pos], data[pos + 1]
            if (b0 != 0x81 and b0 != 0x82) or b1 < 0x80:  # FIN + text/binary, no RSV bits; masked
                return messages, data[pos:]
            n = b1 & 0x7F
            if n < 126:
                start = pos + 6
            elif n == 126:
                if left < 8:
                    need = 8
                    break
                n = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 8
                if n < 126:
                    return messages, data[pos:]
            else:
                if left < 14:
                    need = 14
                    break
                n = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 14
                if n < 65536 or n >> 63:
                    return messages, data[pos:]
            if n > limit:
                return messages, data[pos:]
            stop = start + n
            if stop > end:
                need = stop - pos
                break
            mask = data[start - 4 : start]
            payload = data[start:stop]
            if mask != b"\0\0\0\0":
                payload = _unmask(payload, mask)
            if b0 == 0x81:
                try:
                    messages.append(payload.decode("utf-8"))
                except UnicodeDecodeError:
                    return messages, data[pos:]
            else:
                messages.append(payload)
            pos = stop
        if pos < end:
            self._tail.append(data[pos:] if pos else data)
            self._tail_len = end - pos
            self._tail_need = need
        return messages, None

    def _add(self, event: Message) -> str | bytes | None:
        """Collect a fragment; the whole message once it is finished (and within the limit)."""
        if isinstance(event, TextMessage):
            if event.message_finished and not self._text:
                if len(event.data) > self.max_message_size:  # characters <= bytes: checked again below
                    self._size = len(event.data.encode("utf-8"))
                    return None if self._size > self.max_message_size else event.data
                return event.data
            self._text.append(event.data)
            self._size += len(event.data)
            if not event.message_finished or self._size > self.max_message_size:
                return None
            text = "".join(self._text)
            self._text.clear()
            self._size = 0
            return text
        assert isinstance(event, BytesMessage)
        chunk = bytes(event.data)
        if event.message_finished and not self._binary and len(chunk) <= self.max_message_size:
            return chunk
        self._binary.append(chunk)
        self._size += len(chunk)
        if not event.message_finished or self._size > self.max_message_size:
            return None
        blob = b"".join(self._binary)
        self._binary.clear()
        self._size = 0
        return blob

    def _ended(self, closed: WebSocketClosed) -> WebSocketClosed:
        self.closed = closed
        return closed

    def _close_frame(self, code: int, reason: str) -> bytes:
        if self._close_sent:
            return b""
        self._close_sent = True
        return self._ws.send(CloseConnection(code=code, reason=reason))

    async def _write_quietly(self, data: bytes) -> None:
        try:
            await self._io.write(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def send_messages(self, messages: list[str | bytes], timeout: float | None = None) -> bool:
        """Write ``messages`` as one write; raises :class:`WebSocketClosed` once closed.

        False if ``timeout`` seconds passed before all was written (the connection may
        then be left mid-frame: the caller drops it).
        """
        if self.closed is not None or self._close_sent:
            raise self.closed or WebSocketClosed(1000, "closing")
        try:
            return await self._io.write(_frames(messages), timeout)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._ended(WebSocketClosed(1006, str(exc) or "connection lost")) from None

    async def send_message(self, message: str | bytes) -> None:
        await self.send_messages([message])

    async def aclose(self, code: int = 1000, reason: str = "", timeout: float = 5.0) -> None:
        """Send a close frame (unless one was sent) and close the stream; bounded by ``timeout``."""
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + timeout
            try:
                if self.closed is None:
                    await self._write_quietly(self._close_frame(code, reason))
            finally:
                self.closed = self.closed or WebSocketClosed(code, reason)
                await self._io.stream.aclose()


def _frames(messages: list[str | bytes]) -> bytes:
    """Server frames (unmasked, unfragmented) for ``messages``: the bytes wsproto writes."""
    parts: list[bytes] = []
    for message in messages:
        if isinstance(message, str):
            payload, first = message.encode("utf-8"), 0x81
        else:
            payload, first = message, 0x82
        n = len(payload)
        if n < 126:
            parts.append(bytes((first, n)))
        elif n < 65536:
            parts.append(bytes((first, 126, n >> 8, n & 0xFF)))
        else:
            parts.append(bytes((first, 127)) + n.to_bytes(8, "big"))
        parts.append(payload)
    return b"".join(parts)


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
