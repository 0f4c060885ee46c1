"""Run a coroutine's first step inline, and hand it on only if it blocks.

Servers that start a task per request pay for a spawn (and a scheduler pass)
even when the handler never waits for anything, which is the common case. With
:func:`first_step` the reading task runs the handler's first step itself; if the
handler finishes there, no task was spawned. If it blocked, the caller hands its
*reading* role to a fresh task and finishes the handler with :func:`resume` in the
same task that started it, so every trap the coroutine yields still comes from the
task that entered its cancel scopes: exactly what ``await`` would have done.

:class:`ReadingRole` is the hand-off itself and the adaptive policy, shared by every
server that reads requests this way (the ZeroMQ bridges, the IPC server): a bounded
number of slots for handlers that blocked, and a moving average of how often
handlers block, so a server whose handlers mostly block can give each request a
task of its own straight away.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import trio

__all__ = ["Blocked", "ReadingRole", "first_step", "resume"]


class Blocked:
    """A coroutine that yielded to the scheduler on its first step."""

    __slots__ = ("coro", "trap")

    def __init__(self, coro: Coroutine[Any, Any, Any], trap: Any) -> None:
        self.coro = coro
        self.trap = trap


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def first_step(result: Any) -> Any:
    """Run ``result``'s first step if it is awaitable.

    Returns the final value when it finished without blocking (or ``result`` itself
    when it is not awaitable), or a :class:`Blocked` to pass to :func:`resume`.
    Exceptions from the first step propagate. Call it from the task that will
    finish the coroutine.
    """
    coro: Coroutine[Any, Any, Any]
    if type(result) is types.CoroutineType:
        coro = result
    elif inspect.isawaitable(result):
        coro = _as_coroutine(result)
    else:
        return result
    try:
        trap = coro.send(None)
    except StopIteration as stop:
        return stop.value
    return Blocked(coro, trap)


@types.coroutine
def resume(blocked: Blocked) -> Any:
    """Drive a :class:`Blocked` coroutine to its end in the calling task; returns its value.

    Every value and exception the scheduler sends goes to the coroutine, and closing
    this driver closes the coroutine, as ``await`` would.
    """
    coro, to_yield = blocked.coro, blocked.trap
    while True:
        try:
            sent = yield to_yield
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                to_yield = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                to_yield = coro.send(sent)
            except StopIteration as stop:
                return stop.value


class ReadingRole:
    """Who reads next when a handler blocks, and whether handlers mostly block.

    One task at a time holds a reader's *reading role*. It runs each handler's
    first step inline (:func:`first_step`) and reports the outcome with
    :meth:`record`. When a handler blocked, :meth:`hand_off` starts ``read(*args)``
    in ``nursery`` (the new holder of the role) if one of ``max_blocked`` slots is
    free; the caller then finishes the handler with :func:`resume` and calls
    :meth:`release` once it is done. With no slot free :meth:`hand_off` returns
    False and the caller finishes the handler before it reads on (backpressure).

    :attr:`mostly_blocks` is True once more than half of the recent handlers
    blocked (an exponential moving average with weight :attr:`WEIGHT`); a reader
    may then give each request a task of its own (:meth:`try_acquire` a slot,
    start the task, :meth:`release` when it ends) so a whole burst reaches the
    handlers in one scheduler pass. ``nursery`` may be set later (``None`` refuses
    every hand-off); :attr:`closed` refuses them too (a draining server).
    """

    __slots__ = ("args", "blocking", "closed", "nursery", "read", "slots")

    #: Weight of the newest observation in :attr:`blocking`.
    WEIGHT = 0.1
    #: :attr:`mostly_blocks` once :attr:`blocking` is above this.
    THRESHOLD = 0.5

    def __init__(
        self,
        max_blocked: int,
        read: Callable[..., Awaitable[Any]],
        *args: Any,
        nursery: trio.Nursery | None = None,
    ) -> None:
        if max_blocked < 1:
            raise ValueError(f"max_blocked must be >= 1, got {max_blocked}")
        self.slots = trio.Semaphore(max_blocked)
        self.read = read
        self.args = args
        self.nursery = nursery
        self.closed = False
        #: Moving average of how often handlers block on their first step (0..1).
        self.blocking = 0.0

    def record(self, blocked: bool) -> None:
        """Count one handler's first step: it blocked, or it finished."""
        self.blocking += self.WEIGHT * ((1.0 if blocked else 0.0) - self.blocking)

    @property
    def mostly_blocks(self) -> bool:
        """True when most recent handlers blocked on their first step."""
        return self.blocking > self.THRESHOLD

    def try_acquire(self) -> bool:
        """Take a slot without waiting; False if none is free or hand-offs are refused."""
        if self.closed or self.nursery is None:
            return False
        try:
            self.slots.acquire_nowait()
        except trio.WouldBlock:
            return False
        return True

    def hand_off(self) -> bool:
        """Start a new reader if a slot is free; True if the caller no longer reads."""
        if not self.try_acquire():
            return False
        assert self.nursery is not None
        self.nursery.start_soon(self.read, *self.args)
        return True

    def release(self) -> None:
        """Give back the slot of a handler that was handed off (or had a task of its own)."""
        self.slots.release()
