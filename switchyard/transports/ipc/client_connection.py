"""One live connection of an IPC client: the handshake, and matching what arrives.

:class:`ClientConnection` is made by :class:`~switchyard.transports.ipc.client.SocketClient`
for every (re)connect. It owns what is in flight on that connection (requests by
id, streams by id), so an answer can only ever reach a request sent on the same
connection. The client owns the reconnect policy, the counters and the push queue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from switchyard.protocols.codec import Codec
from switchyard.protocols.ipc import ERR_UNKNOWN_METHOD, IpcProtocolError, Kind, Message
from switchyard.transports.ipc.address import IpcAddress, connect_stream
from switchyard.transports.ipc.connection import FramedConnection
from switchyard.transports.ipc.deadlines import Pending
from switchyard.transports.ipc.errors import RemoteError
from switchyard.transports.ipc.stream import IpcStream

if TYPE_CHECKING:
    from switchyard.transports.ipc.client import SocketClient

__all__ = ["ClientConnection", "HandshakeFailed", "open_connection"]


class HandshakeFailed(Exception):
    """The server refused ``ipc.hello`` or answered something else first."""


class ClientConnection:
    """One live connection of the client and what is in flight on it."""

    def __init__(self, client: SocketClient, framed: FramedConnection, conn_id: str) -> None:
        self.client = client
        self.framed = framed
        self.conn_id = conn_id
        self.pending: dict[str, Pending] = {}
        self.streams: dict[str, IpcStream] = {}
        self.drop_reason: str | None = None

    # -- incoming -------------------------------------------------------------
    async def on_message(self, message: Message) -> None:
        client = self.client
        kind = message.kind
        if kind is Kind.RESPONSE or kind is Kind.ERROR:
            pending = self.pending.pop(message.id, None)
            if pending is not None:
                if kind is Kind.RESPONSE:
                    pending.value = message.data
                else:
                    pending.error = self.remote_error(pending.method, message)
                pending.event.set()
                return
            stream = self.streams.pop(message.id, None)
            if stream is not None:
                stream._finish(None if kind is Kind.RESPONSE else self.remote_error(stream.method, message))
                return
            if message.id.startswith(client._id_prefix):
                client.log.debug("answer to an abandoned request (id %r) dropped", message.id)
            else:
                client._stats["errors"] += 1
                client.log.warning("server reported an error (id %r): %s", message.id, message.data)
        elif kind is Kind.PUSH:
            stream = self.streams.get(message.id) if message.id else None
            if stream is not None:
                if not stream._deliver(message.data):
                    self.streams.pop(message.id, None)
                    await client._send_cancel(self, message.id)
                return
            client._stats["pushes"] += 1
            try:
                client._push_send.send_nowait((message.method, message.data))
            except trio.WouldBlock:
                # Push handlers are behind: stop reading until they catch up. The
                # silence is ours, so the heartbeat must not blame the server.
                self.framed.paused = True
                try:
                    await client._push_send.send((message.method, message.data))
                finally:
                    self.framed.paused = False
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

    async def on_bad(self, exc: IpcProtocolError) -> None:
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
        except BaseException:
            framed.close()
            raise
    return ClientConnection(client, framed, conn_id)


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
