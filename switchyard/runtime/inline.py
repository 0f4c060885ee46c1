"""Run a coroutine's first step inline, and hand it on only if it blocks.

Servers that start a task per request pay for a spawn (and a scheduler pass)
even when the handler never waits for anything, which is the common case. With
:func:`first_step` the reading task runs the handler's first step itself; if the
handler finishes there, no task was spawned. If it blocked, the caller hands its
*reading* role to a fresh task and finishes the handler with :func:`resume` in the
same task that started it, so every trap the coroutine yields still comes from the
task that entered its cancel scopes: exactly what ``await`` would have done.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Awaitable, Coroutine
from typing import Any

__all__ = ["Blocked", "first_step", "resume"]


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
