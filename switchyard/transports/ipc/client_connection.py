"""One live connection of an IPC client: the handshake, the reading role, and matching what arrives.

:class:`ClientConnection` is made by :class:`~switchyard.transports.ipc.client.SocketClient`
for every (re)connect. It owns what is in flight on that connection (requests by
id, streams by id), so an answer can only ever reach a request sent on the same
connection. The client owns the reconnect policy, the counters and the push queue.

Who reads the socket (the *reading role*, held by one task at a time):

* A request waiting for its answer reads the socket itself when nobody else does,
  so a lone request costs one wake-up (its own, when the answer arrives) instead
  of two (a reader task's, then the caller's). It hands every other message that
  arrived in the same read to whoever waits for it, and gives the role up as soon
  as its own answer is in.
* Requests that find the role taken park until their answer comes or the role is
  handed to them. A reader that leaves passes the role to a parked request, or to
  the connection's idle reader (:meth:`ClientConnection.run`), which reads while
  no request does: pushes, heartbeats and the end of the connection are seen at
  any time.
* A request never blocks on anything but the socket while it reads: a message
  that needs waiting (a push while the push queue is full, a ping to answer)
  goes to the idle reader, in order, with the rest of the stream behind it.
"""

from __future__ import annotations

import collections
import math
import os
from typing import TYPE_CHECKING, Any

import trio

from switchyard.protocols.codec import Codec
from switchyard.protocols.ipc import ERR_UNKNOWN_METHOD, BadMessage, IpcProtocolError, Kind, Message
from switchyard.protocols.ipc_framing import FrameTooLarge
from switchyard.transports.ipc.address import IpcAddress, connect_stream
from switchyard.transports.ipc.connection import RECEIVE_SIZE, FramedConnection
from switchyard.transports.ipc.deadlines import Pending
from switchyard.transports.ipc.errors import RemoteError
from switchyard.transports.ipc.stream import IpcStream
from switchyard.transports.ipc.waker import ReadWaker

if TYPE_CHECKING:
    from switchyard.transports.ipc.client import SocketClient

__all__ = ["ClientConnection", "HandshakeFailed", "open_connection"]

#: The reading role's holder when it is the connection's idle reader.
IDLE: Any = "idle reader"
#: How long the idle reader lets the role lie after the last request gave it up
#: (seconds): a push or the end of the connection is seen at most this much later.
IDLE_GRACE = 0.002


class HandshakeFailed(Exception):
    """The server refused ``ipc.hello`` or answered something else first."""


class ClientConnection:
    """One live connection of the client, what is in flight on it, and who reads it."""

    def __init__(self, client: SocketClient, framed: FramedConnection, conn_id: str) -> None:
        self.client = client
        self.framed = framed
        self.conn_id = conn_id
        self.pending: dict[str, Pending] = {}
        self.streams: dict[str, IpcStream] = {}
        self.drop_reason: str | None = None
        #: How many requests are parked in :meth:`Pending.park`.
        self.parked = 0
        # The reading role: its holder (None, IDLE or a Pending), and the one woken
        # to take it over that has not run yet (so a release wakes nobody else).
        self._reader: Any = None
        self._heir: Any = None
        # Messages a reading request could not handle without waiting; the idle
        # reader handles them first, in order.
        self._backlog: collections.deque[Message] = collections.deque()
        self._fd = framed.stream.socket.fileno()
        # What the role's holder waits on: interruptible by a timeout without a
        # cancel scope per request; closed with the socket.
        self._waker = ReadWaker(self._fd)
        framed.on_close = self._waker.close
        self._idle_task: trio.lowlevel.Task | None = None  # the idle reader, while parked
        self._idle_timer: trio.CancelScope | None = None  # ... and what wakes it after IDLE_GRACE
        self._idle_wait: trio.CancelScope | None = None  # while it holds the role and waits for bytes

    def end(self, reason: str) -> None:
        """Close the connection (first reason wins); the idle reader then returns."""
        if self.drop_reason is None:
            self.drop_reason = reason
        self.framed.close()
        self._wake_idle()

    # -- the reading role -----------------------------------------------------
    async def wait_answer(self, pending: Pending) -> None:
        """Return once ``pending`` is settled, reading the socket meanwhile if nobody else does.

        Cancellation and ``pending``'s timeout (:meth:`interrupt`) end the wait; the
        role then goes to the next reader.
        """
        try:
            while not pending.done:
                if self._heir is pending:
                    self._heir = None
                reader = self._reader
                if self.framed.closed or self._backlog:
                    await pending.park()  # the drop fails it / the idle reader catches up first
                elif reader is None:
                    await self.read_for(pending)
                elif reader is IDLE and self._idle_wait is not None:
                    # The idle reader only waits for bytes: take over. The abort is
                    # synchronous, so the socket is free for this task right away.
                    self._idle_wait.cancel()
                    self._idle_wait = None
                    await self.read_for(pending)
                else:
                    await pending.park()
        finally:
            if self._heir is pending:  # woken to read, but no longer needs to
                self._heir = None
                if self._reader is None:
                    self._appoint()

    def interrupt(self, pending: Pending) -> None:
        """``pending`` was settled from outside (timeout): stop it reading, if it does."""
        if self._reader is pending:
            self._waker.wake()

    def free_to_read(self) -> bool:
        """Whether a request may take the reading role right now (nobody holds it, nothing waits)."""
        return self._reader is None and not self._backlog and not self.framed.closed

    async def read_for(self, pending: Pending) -> None:
        """Hold the reading role until ``pending`` is settled (or the role must go to
        the idle reader); only when :meth:`free_to_read`. :meth:`wait_answer` does the rest."""
        self._reader = pending
        framed = self.framed
        reader = framed.reader
        waker = self._waker
        try:
            while True:
                # Parse only when bytes are buffered: most often the buffer is
                # empty before the wait and holds exactly the answer after it.
                if (reader.buffered or self._backlog) and not self._drain_now():
                    break
                if pending.done or framed.closed:
                    break
                await waker.wait()
                self._receive()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.end("closed")
        finally:
            self._release()

    def _release(self) -> None:
        self._reader = None
        heir = self._heir
        # The idle reader may still be in its grace period: requests parked since,
        # or a backlog, must not wait for it.
        if heir is None or (heir is IDLE and (self.parked or self._backlog or self.framed.closed)):
            self._appoint()

    def _appoint(self) -> None:
        """Wake the next holder of the role: a parked request, else the idle reader.

        The idle reader is given :data:`IDLE_GRACE` seconds first: a caller that
        requests again within them (a request loop) takes the role back itself, and
        the idle reader is not woken at all.
        """
        closed = self.framed.closed
        if self.parked and not self._backlog and not closed:
            for pending in self.pending.values():
                if pending.task is not None:
                    self._heir = pending
                    pending.wake()
                    return
        self._heir = IDLE
        timer = self._idle_timer
        if closed or self._backlog or timer is None:
            self._wake_idle()
        elif timer.deadline == math.inf:
            timer.deadline = trio.current_time() + IDLE_GRACE

    def _wake_idle(self) -> None:
        task = self._idle_task
        if task is not None:
            self._idle_task = None
            trio.lowlevel.reschedule(task)

    async def _park_idle(self) -> None:
        def abort(_: Any) -> trio.lowlevel.Abort:
            self._idle_task = None
            return trio.lowlevel.Abort.SUCCEEDED

        with trio.CancelScope() as self._idle_timer:
            self._idle_task = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(abort)
        self._idle_timer = None

    async def run(self) -> str:
        """The idle reader: read whenever no request does, until the connection ends; returns why."""
        while not self.framed.closed:
            if self._heir is IDLE:
                self._heir = None
            if self._reader is None and self._heir is None:
                await self._read_idle()
            else:
                await self._park_idle()
        return self.drop_reason or "closed"

    async def _read_idle(self) -> None:
        self._reader = IDLE
        framed = self.framed
        try:
            while True:
                while self._backlog:
                    await self.on_message(self._backlog.popleft())
                while (message := self._next_message()) is not None:
                    await self.on_message(message)
                if framed.closed or (self.parked and self.pending):
                    return  # requests wait: one of them reads for itself
                with trio.CancelScope() as waiting:
                    self._idle_wait = waiting
                    try:
                        await self._waker.wait()
                    finally:
                        self._idle_wait = None
                if waiting.cancel_called or self._reader is not IDLE:
                    # A request took the role over (perhaps after the bytes came: they
                    # stay in the socket for it).
                    return
                self._receive()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.end("closed")
        finally:
            if self._reader is IDLE:
                self._release()

    def _receive(self) -> None:
        """Read what the socket has into the frame buffer; a read that ends the connection ends it."""
        framed = self.framed
        if framed.closed:
            return
        try:
            data = os.read(self._fd, RECEIVE_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.end(f"reset ({exc})")
            return
        if not data:
            buffered = framed.reader.buffered
            self.end(
                f"closed by peer in the middle of a frame ({buffered} bytes unread)" if buffered else "closed by peer"
            )
            return
        framed.last_received = trio.current_time()
        framed.reader.receive_data(data)

    def _next_message(self) -> Message | None:
        """The next complete message in the buffer, bad ones reported and skipped."""
        reader = self.framed.reader
        while True:
            try:
                message = reader.next_message()
            except BadMessage as exc:
                self.on_bad(exc)
                continue
            except FrameTooLarge as exc:
                self.on_bad(exc)
                self.end(f"protocol error: {exc}")
                return None
            if message is not None:
                self.framed.messages_in += 1
            return message

    def _drain_now(self) -> bool:
        """Handle every buffered message that needs no waiting; False once one does (or the end)."""
        if self._backlog:
            return False
        reader = self.framed.reader
        while reader.buffered and (message := self._next_message()) is not None:
            if not self._handle_now(message):
                self._backlog.append(message)
                return False
        return not self.framed.closed

    # -- incoming -------------------------------------------------------------
    def _handle_now(self, message: Message) -> bool:
        """Handle ``message`` without waiting; False (and nothing done) if it needs :meth:`on_message`."""
        kind = message.kind
        if kind is Kind.RESPONSE or kind is Kind.ERROR:
            pending = self.pending.pop(message.id, None)
            if pending is not None:
                if kind is Kind.RESPONSE:
                    pending.finish(message.data)
                else:
                    pending.fail(self.remote_error(pending.method, message))
                return True
            self._unmatched(message)
            return True
        if kind is Kind.PUSH:
            stream = self.streams.get(message.id) if message.id else None
            if stream is not None:
                if not stream._deliver(message.data):
                    self.streams.pop(message.id, None)
                    nursery = self.client._nursery
                    if nursery is not None:
                        nursery.start_soon(self.client._send_cancel, self, message.id)
                return True
            try:
                self.client._push_send.send_nowait((message.method, message.data))
            except trio.WouldBlock:
                return False
            self.client._stats["pushes"] += 1
            return True
        if kind is Kind.HEARTBEAT and not message.is_ping:
            self.framed.pong_received(message)
            return True
        return False  # a ping to answer, or a request to refuse: both write

    def _unmatched(self, message: Message) -> None:
        """An answer nobody waits for: a stream's end, or one to a request given up on."""
        stream = self.streams.pop(message.id, None)
        if stream is not None:
            stream._finish(None if message.kind is Kind.RESPONSE else self.remote_error(stream.method, message))
        elif message.id.startswith(self.client._id_prefix):
            self.client.log.debug("answer to an abandoned request (id %r) dropped", message.id)
        else:
            self.client._stats["errors"] += 1
            self.client.log.warning("server reported an error (id %r): %s", message.id, message.data)

    async def on_message(self, message: Message) -> None:
        """Handle any message, waiting where it must (the idle reader's path)."""
        if self._handle_now(message):
            return
        client = self.client
        kind = message.kind
        if kind is Kind.PUSH:  # the push queue is full
            # Push handlers are behind: stop reading until they catch up. The
            # silence is ours, so the heartbeat must not blame the server.
            self.framed.paused = True
            try:
                await client._push_send.send((message.method, message.data))
            finally:
                self.framed.paused = False
            client._stats["pushes"] += 1
        elif kind is Kind.HEARTBEAT:
            try:
                await self.framed.answer_heartbeat(message)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        else:  # a request: clients serve none
            try:
                await self.framed.send(
                    message.reply_error(ERR_UNKNOWN_METHOD, "this peer is a client and serves no requests")
                )
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def remote_error(self, method: str, message: Message) -> RemoteError:
        self.client._stats["remote_errors"] += 1
        data = message.data if isinstance(message.data, dict) else {}
        return RemoteError(method, str(data.get("code", "error")), str(data.get("message", message.data)))

    def on_bad(self, exc: IpcProtocolError) -> None:
        self.client._stats["errors"] += 1
        self.client.log.warning("server %s sent a bad message: %s", self.client.address, exc)


async def open_connection(
    client: SocketClient,
    address: IpcAddress,
    *,
    codec: Codec,
    max_frame_size: int,
    connect_timeout: float,
    hello: Message,
) -> ClientConnection:
    """Connect and shake hands within ``connect_timeout`` (``trio.TooSlowError``);
    ``OSError`` if nothing answers, :class:`HandshakeFailed` if the server refuses."""
    with trio.fail_after(connect_timeout):
        stream = await connect_stream(address)
        framed = FramedConnection(stream, codec=codec, max_frame_size=max_frame_size, label=str(address))
        try:
            conn_id = await _handshake(framed, hello)
            return ClientConnection(client, framed, conn_id)
        except BaseException:
            framed.close()
            raise


async def _handshake(framed: FramedConnection, hello: Message) -> str:
    """Send ``ipc.hello`` and read its answer before anything else runs on the stream."""
    await framed.send(hello)
    while True:
        data = await framed.stream.receive_some(1 << 16)
        if not data:
            raise HandshakeFailed("server closed the connection during the handshake")
        framed.reader.receive_data(data)
        try:
            message = framed.reader.next_message()
        except IpcProtocolError as exc:
            raise HandshakeFailed(f"bad handshake answer: {exc}") from None
        if message is None:
            continue
        if message.id != hello.id:
            detail: Any = message.data.get("message") if isinstance(message.data, dict) else message.data
            raise HandshakeFailed(f"server answered {message.kind.value} before the handshake: {detail}")
        if message.kind is Kind.RESPONSE:
            return str(message.data.get("conn_id", "")) if isinstance(message.data, dict) else ""
        code = message.data.get("code") if isinstance(message.data, dict) else None
        if message.kind is Kind.ERROR and code == ERR_UNKNOWN_METHOD:
            return ""  # a peer without handshakes: fine, nothing to check
        raise HandshakeFailed(f"server refused the handshake: {message.data}")
