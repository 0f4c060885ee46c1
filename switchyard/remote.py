"""Actors of another process, reached like local ones (over the IPC socket transport).

A process that runs an ``ipc_server`` actor (:mod:`switchyard.actors.ipc`) exposes
its actors; :func:`open_remote_system` connects to it and :meth:`RemoteSystem.lookup`
gives a :class:`RemoteActorRef` with the methods of a local ``ActorRef``::

    async with open_remote_system("/run/user/1000/switchyard/app.sock") as remote:
        echo = remote.lookup("echo")
        await echo.tell({"hi": 1})
        print(await echo.ask("ping", timeout=2.0))
        async with echo.stream({"count": 3}) as replies:
            async for item in replies: ...

Errors the remote side names (:data:`ERROR_CODES`, plus ``actor_error``) are raised
as the same runtime exception a local ref would raise (``ActorNotFound``,
``ActorError``, ``AskTimeout``, ``MailboxFull``, ``ActorStopped``), so code written
against a local ref works unchanged. Transport failures keep their own types
(``ConnectionLost``, ``NotConnected``): they say nothing about the actor. Messages
and replies must be values the connection's codec carries (JSON by default;
msgpack adds bytes).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from switchyard.runtime import ActorError, ActorNotFound, ActorStopped, AskTimeout, MailboxFull
from switchyard.runtime.ref import DEFAULT_ASK_TIMEOUT
from switchyard.transports.ipc.client import SocketClient
from switchyard.transports.ipc.errors import NotConnected, RemoteError, RequestTimeout
from switchyard.transports.ipc.stream import IpcStream

__all__ = ["ERROR_CODES", "RemoteActorRef", "RemoteReplyStream", "RemoteSystem", "open_remote_system"]

# Extra time a client gives the server beyond an ask's own timeout, so that the
# server's ask_timeout answer (not a transport timeout) is what the caller sees.
_TRANSPORT_MARGIN = 1.0

#: The IPC error code for each runtime exception (``ActorError`` is ``actor_error``,
#: its detail ``"<type name>\n<detail>"``): the contract between ``ipc_server`` and
#: :class:`RemoteActorRef`.
ERROR_CODES: dict[type[Exception], str] = {
    AskTimeout: "ask_timeout",
    MailboxFull: "mailbox_full",
    ActorStopped: "actor_stopped",
    ActorNotFound: "actor_not_found",
}


def _local_error(actor: str, exc: RemoteError, timeout: float | None = None) -> Exception:
    """The runtime exception a local ref would have raised for this remote error."""
    if exc.code == "actor_error":
        type_name, _, detail = exc.detail.partition("\n")
        error = ActorError(actor, None, detail)
        error.type_name = type_name
        error.args = (f"actor {actor!r} failed: {type_name}: {detail}",)
        return error
    if exc.code == "ask_timeout":
        return AskTimeout(actor, timeout if timeout is not None else math.inf)
    if exc.code == "mailbox_full":
        full = MailboxFull(actor, 0)
        full.args = (exc.detail,)
        return full
    if exc.code == "actor_stopped":
        return ActorStopped(actor)
    if exc.code == "actor_not_found":
        missing = ActorNotFound(actor, [])
        missing.args = (exc.detail,)
        return missing
    return exc


class RemoteActorRef:
    """An actor in another process, with the methods of a local ``ActorRef``.

    ``tell`` returns once the message is in the remote mailbox; ``tell_nowait``
    queues it in a bounded local outbox (``MailboxFull`` when that is full) that a
    task of the :class:`RemoteSystem` delivers in order; remote delivery errors of
    ``tell_nowait`` are only logged (on both sides), as nobody waits for them.
    """

    __slots__ = ("_name", "_remote")

    def __init__(self, remote: RemoteSystem, name: str) -> None:
        self._remote = remote
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"<RemoteActorRef {self._name!r} at {self._remote.client.address}>"

    async def tell(self, message: Any) -> None:
        try:
            await self._remote.client.request("actor.tell", {"actor": self._name, "message": message})
        except RemoteError as exc:
            raise _local_error(self._name, exc) from None

    def tell_nowait(self, message: Any) -> None:
        try:
            self._remote._outbox_send.send_nowait((self._name, message))
        except trio.WouldBlock:
            raise MailboxFull(self._name, self._remote.outbox_capacity) from None
        except trio.ClosedResourceError:
            raise ActorStopped(self._name, "is unreachable: the remote system is closed") from None

    async def ask(self, message: Any, timeout: float | None = DEFAULT_ASK_TIMEOUT) -> Any:
        data = {"actor": self._name, "message": message, "timeout": timeout}
        transport_timeout = None if timeout is None else timeout + _TRANSPORT_MARGIN
        try:
            return await self._remote.client.request("actor.ask", data, timeout=transport_timeout)
        except RemoteError as exc:
            raise _local_error(self._name, exc, timeout) from None
        except RequestTimeout:
            raise AskTimeout(self._name, timeout if timeout is not None else math.inf) from None

    def stream(self, message: Any) -> RemoteReplyStream:
        """``async with ref.stream(msg) as replies: async for r in replies`` (or just ``async for``)."""
        return RemoteReplyStream(self, message)


class RemoteReplyStream:
    """Consumer side of :meth:`RemoteActorRef.stream`; mirrors ``ReplyStream``."""

    def __init__(self, ref: RemoteActorRef, message: Any) -> None:
        self._ref = ref
        self._stream: IpcStream = ref._remote.client.stream("actor.stream", {"actor": ref.name, "message": message})
        self._started = False
        self._closed = False

    async def __aenter__(self) -> RemoteReplyStream:
        await self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _start(self) -> None:
        self._started = True
        await self._stream.__aenter__()

    def __aiter__(self) -> RemoteReplyStream:
        return self

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        if not self._started:
            await self._start()
        try:
            return await self._stream.__anext__()
        except StopAsyncIteration:
            await self.aclose()
            raise
        except RemoteError as exc:
            await self.aclose()
            raise _local_error(self._ref.name, exc) from None

    async def aclose(self) -> None:
        """Stop consuming; the remote producer is cancelled if it is still running."""
        if not self._closed:
            self._closed = True
            if self._started:
                await self._stream.aclose()


class RemoteSystem:
    """The actors another process exposes with an ``ipc_server`` actor."""

    def __init__(self, client: SocketClient, outbox_capacity: int = 256) -> None:
        self.client = client
        self.outbox_capacity = outbox_capacity
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[tuple[str, Any]](outbox_capacity)

    def lookup(self, name: str) -> RemoteActorRef:
        """A ref to the remote actor ``name`` (checked on first use, not here)."""
        return RemoteActorRef(self, name)

    async def names(self) -> list[str]:
        """The names the remote ``ipc_server`` exposes."""
        return await self.client.request("actor.names")

    async def _deliver_outbox(self) -> None:
        async with self._outbox_receive:
            async for name, message in self._outbox_receive:
                try:
                    await self.client.notify("actor.tell", {"actor": name, "message": message, "nowait": True})
                except Exception as exc:  # nobody awaits a tell_nowait: log and go on
                    self.client.log.warning("tell_nowait to remote actor %r not delivered: %s", name, exc)


@asynccontextmanager
async def open_remote_system(
    address: str, *, max_retries: int = 1, wait: bool = True, outbox_capacity: int = 256, **client_options: Any
) -> AsyncIterator[RemoteSystem]:
    """Connect to a remote ``ipc_server`` for the block (``NotConnected`` if it cannot).

    With ``wait=False`` the block starts at once and the client keeps trying to
    connect in the background; calls made meanwhile wait up to their timeouts.

    ``client_options`` go to :class:`~switchyard.transports.ipc.client.SocketClient`
    (``account_id``, ``codec``, reconnect and heartbeat settings, ...). On exit,
    messages still in the ``tell_nowait`` outbox get up to the client's
    ``request_timeout`` to be delivered.
    """
    async with SocketClient(address, **client_options) as client:
        if not wait:
            client.start_connecting()
        elif not await client.connect(max_retries=max_retries):
            raise NotConnected(f"could not connect to {client.address} in {max_retries} attempt(s)")
        remote = RemoteSystem(client, outbox_capacity)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(remote._deliver_outbox)
            try:
                yield remote
            finally:
                remote._outbox_send.close()  # the delivery task drains the rest, then ends
                nursery.cancel_scope.deadline = trio.current_time() + (client.request_timeout or 5.0)
