"""The consumer side of a server stream (``client.stream(...)``), paced by credits."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import trio

from switchyard.protocols.ipc import Message
from switchyard.transports.ipc.errors import ConnectionLost, RemoteError, RequestTimeout

if TYPE_CHECKING:
    from switchyard.transports.ipc.client import SocketClient
    from switchyard.transports.ipc.client_connection import ClientConnection

__all__ = ["IpcStream"]


class IpcStream:
    """Consumer side of :meth:`SocketClient.stream`: an async context manager and iterator."""

    def __init__(self, client: SocketClient, method: str, data: Any) -> None:
        self._client = client
        self.method = method
        self._data = data
        self._window = client.stream_window
        self._send, self._receive = trio.open_memory_channel[Any](self._window)
        self._conn: ClientConnection | None = None
        self._id = ""
        self._error: BaseException | None = None
        self._done = False
        self._consumed = 0

    # Called by the client's reader task.
    def _deliver(self, item: Any) -> bool:
        try:
            self._send.send_nowait(item)
            return True
        except trio.WouldBlock:
            self._finish(RemoteError(self.method, "protocol", f"server sent more than the {self._window}-item window"))
        except trio.ClosedResourceError:
            pass
        return False

    def _finish(self, error: BaseException | None) -> None:
        if not self._done:
            self._done = True
            self._error = error
            self._send.close()

    async def __aenter__(self) -> IpcStream:
        client = self._client
        timeout = client.request_timeout
        with trio.move_on_after(math.inf if timeout is None else timeout):
            self._conn = await client._connection()
        conn = self._conn
        if conn is None:
            raise RequestTimeout(self.method, math.inf if timeout is None else timeout)
        self._id = client._new_id()
        conn.streams[self._id] = self
        request = Message.request(
            self._id, "ipc.stream", {"method": self.method, "data": self._data, "window": self._window}
        )
        try:
            await conn.framed.send(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.streams.pop(self._id, None)
            raise ConnectionLost(str(client.address), self.method, self._id, conn.drop_reason or "closed") from None
        except BaseException:
            conn.streams.pop(self._id, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> IpcStream:
        return self

    async def __anext__(self) -> Any:
        if self._conn is None:
            raise RuntimeError("use `async with client.stream(...) as items:`")
        try:
            item = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self._error is not None:
                error, self._error = self._error, None
                raise error from None
            raise StopAsyncIteration from None
        self._consumed += 1
        grant = max(1, self._window // 2)
        if self._consumed >= grant and not self._done:
            self._consumed = 0
            try:
                await self._conn.framed.send(Message.push("ipc.credit", {"id": self._id, "n": grant}))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the drop fails this stream through the reader
        return item

    async def aclose(self) -> None:
        """Stop consuming; the server's handler is cancelled if it is still running."""
        conn = self._conn
        if conn is not None and not self._done:
            self._finish(None)
            if conn.streams.pop(self._id, None) is not None:
                with trio.CancelScope(shield=True):
                    await self._client._send_cancel(conn, self._id)
        self._receive.close()
