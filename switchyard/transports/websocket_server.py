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
  frame (if none was sent) and closes the stream.
"""

from __future__ import annotations

import socket as _stdsocket

import trio
from wsproto import ConnectionType, WSConnection
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

__all__ = ["PendingWebSocket", "WebSocketClosed", "WebSocketConnection", "handshake"]

_READ = 65536
_CHECKPOINT_EVERY = 8  # reads that did not wait, between two forced checkpoints


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


class _Io:
    """Reads and writes on ``stream``, straight on the OS socket when they need not wait."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.prefix = stream.take_prefix() if isinstance(stream, PrefixedStream) else b""
        self.raw = _raw_socket(stream)
        self._unwaited = 0
        self.write_lock = trio.Lock()

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

    async def write(self, data: bytes) -> None:
        if not data:
            return
        # a free lock is taken without a checkpoint: one scheduler trip less per write
        try:
            self.write_lock.acquire_nowait()
        except trio.WouldBlock:
            await self.write_lock.acquire()
        try:
            raw = self.raw
            if raw is not None:
                try:
                    sent = raw.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    raise trio.BrokenResourceError(str(exc)) from exc
                if sent == len(data):
                    return
                data = data[sent:]
            await self.stream.send_all(data)
        finally:
            self.write_lock.release()


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
            self._ws.receive_data(data or None)
            messages: list[str | bytes] = []
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
                    if not self._close_sent:
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

    async def send_messages(self, messages: list[str | bytes]) -> None:
        """Write ``messages`` as one write; raises :class:`WebSocketClosed` once closed."""
        if self.closed is not None or self._close_sent:
            raise self.closed or WebSocketClosed(1000, "closing")
        ws = self._ws
        data = b"".join(
            [ws.send(TextMessage(data=m) if isinstance(m, str) else BytesMessage(data=m)) for m in messages]
        )
        try:
            await self._io.write(data)
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
