"""``ActorRef``: the only way to reach an actor."""

from __future__ import annotations

import math
from types import TracebackType
from typing import TYPE_CHECKING, Any

import trio

from switchyard.runtime.envelope import Envelope, Kind
from switchyard.runtime.errors import ActorStopped, AskTimeout, MailboxFull

__all__ = ["DEFAULT_ASK_TIMEOUT", "ActorRef", "ReplyStream"]

if TYPE_CHECKING:
    from switchyard.runtime.actor import ActorSlot

DEFAULT_ASK_TIMEOUT = 5.0


class ActorRef:
    """A handle on a named actor's mailbox.

    A ref stays valid across restarts of the actor (the mailbox belongs to the name,
    not to one incarnation), so it is safe to keep. Once the actor stops for good
    every method raises :class:`ActorStopped`.
    """

    __slots__ = ("_slot",)

    def __init__(self, slot: ActorSlot) -> None:
        self._slot = slot

    @property
    def name(self) -> str:
        return self._slot.name

    def __repr__(self) -> str:
        return f"<ActorRef {self._slot.name!r}>"

    async def _post(self, envelope: Envelope) -> None:
        try:
            await self._slot.send_channel.send(envelope)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ActorStopped(self._slot.name) from None

    async def tell(self, message: Any) -> None:
        """Deliver ``message``; waits while the mailbox is full (backpressure)."""
        try:
            await self._slot.send_channel.send(Envelope(message, Kind.TELL))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ActorStopped(self._slot.name) from None

    def tell_nowait(self, message: Any) -> None:
        """Deliver ``message`` now or raise :class:`MailboxFull` without waiting."""
        try:
            self._slot.send_channel.send_nowait(Envelope(message, Kind.TELL))
        except trio.WouldBlock:
            raise MailboxFull(self._slot.name, self._slot.capacity) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ActorStopped(self._slot.name) from None

    async def ask(self, message: Any, timeout: float | None = DEFAULT_ASK_TIMEOUT) -> Any:
        """Send ``message`` and return the handler's result.

        Raises :class:`AskTimeout` if no reply comes within ``timeout`` seconds
        (``None``: wait for ever; the time spent waiting for mailbox room counts),
        :class:`~switchyard.runtime.errors.ActorError` if the handler raised (the
        actor goes on), :class:`ActorStopped` if the actor is gone.
        """
        envelope = Envelope(message, Kind.ASK)
        envelope.done = trio.Event()
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        with trio.move_on_at(deadline) as scope:
            try:
                self._slot.send_channel.send_nowait(envelope)
            except trio.WouldBlock:
                await self._post(envelope)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise ActorStopped(self._slot.name) from None
            await envelope.done.wait()
        if scope.cancelled_caught:
            envelope.abandoned = True
            raise AskTimeout(self._slot.name, timeout if timeout is not None else math.inf)
        if envelope.error is not None:
            raise envelope.error
        return envelope.value

    def stream(self, message: Any) -> ReplyStream:
        """Send ``message`` to ``handle_stream`` and iterate over its replies.

        Use as ``async with ref.stream(msg) as replies: async for r in replies``.
        Leaving the block early cancels the producer at once. Without ``async
        with`` the producer stops at its next reply after the iterator is closed.
        """
        return ReplyStream(self, message)


class ReplyStream:
    """The consumer side of ``ActorRef.stream``: an async iterator and context manager."""

    def __init__(self, ref: ActorRef, message: Any) -> None:
        self._ref = ref
        self._envelope = Envelope(message, Kind.STREAM)
        self._receive: trio.MemoryReceiveChannel[Any] | None = None
        self._closed = False

    async def _start(self) -> None:
        send, receive = trio.open_memory_channel[Any](0)
        self._envelope.replies = send
        self._receive = receive
        try:
            await self._ref._post(self._envelope)
        except BaseException:
            send.close()
            receive.close()
            self._closed = True
            raise

    async def __aenter__(self) -> ReplyStream:
        await self._start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> ReplyStream:
        return self

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        if self._receive is None:
            await self._start()
        assert self._receive is not None
        try:
            item = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            await self.aclose()
            if self._envelope.error is not None:
                raise self._envelope.error from None
            raise StopAsyncIteration from None
        return item

    async def aclose(self) -> None:
        """Stop consuming; the producer is cancelled if it is still running."""
        if self._closed:
            return
        self._closed = True
        self._envelope.abandoned = True
        if self._envelope.scope is not None:
            self._envelope.scope.cancel()
        if self._receive is not None:
            self._receive.close()
        await trio.lowlevel.checkpoint()
