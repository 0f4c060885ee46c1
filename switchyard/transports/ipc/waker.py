"""Wait for a socket to become readable, interruptible from another task without a cancel scope.

The IPC client's reading request waits for its answer in the socket itself, and
the request's timeout (enforced by another task) must be able to end that wait.
A cancel scope per wait would do it, but entering and leaving one costs more than
a task switch, on every request. On Linux, :class:`ReadWaker` instead waits on a
private epoll set holding the socket and an eventfd: :meth:`~ReadWaker.wake`
writes the eventfd and the waiter returns, with no cancel scope on the hot path.
Elsewhere it falls back to a cancel scope per wait.

What a caller may rely on: :meth:`~ReadWaker.wait` returns when the socket is
readable (or at EOF / error), after :meth:`~ReadWaker.wake`, or spuriously; the
caller re-checks its own condition. One task waits at a time. :meth:`~ReadWaker.close`
wakes a waiter with ``trio.ClosedResourceError`` and releases the descriptors.
"""

from __future__ import annotations

import os
import select

import trio

__all__ = ["ReadWaker"]

_NESTED = hasattr(select, "epoll") and hasattr(os, "eventfd")


class ReadWaker:
    """``await wait()`` for readability of ``fd``; ``wake()`` ends a wait from anywhere in the run."""

    __slots__ = ("_closed", "_event", "_fd", "_poller", "_scope", "_wait_fd", "_woken")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._closed = False
        self._woken = False
        self._scope: trio.CancelScope | None = None
        self._poller: select.epoll | None = None
        self._event = -1
        self._wait_fd = fd
        if _NESTED:
            poller = select.epoll()
            try:
                event = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                try:
                    poller.register(fd, select.EPOLLIN)
                    poller.register(event, select.EPOLLIN)
                except BaseException:
                    os.close(event)
                    raise
            except BaseException:
                poller.close()
                raise
            self._poller, self._event, self._wait_fd = poller, event, poller.fileno()

    async def wait(self) -> None:
        """Until ``fd`` is readable or :meth:`wake` was called (it may also return early)."""
        if self._closed:
            raise trio.ClosedResourceError("waker closed")
        if self._poller is None:
            with trio.CancelScope() as self._scope:
                await trio.lowlevel.wait_readable(self._fd)
            self._scope = None
            return
        await trio.lowlevel.wait_readable(self._wait_fd)
        if self._woken and not self._closed:
            self._woken = False
            try:
                os.eventfd_read(self._event)
            except BlockingIOError:
                pass

    def wake(self) -> None:
        """End the current (or, on Linux, the next) :meth:`wait`."""
        if self._closed:
            return
        if self._poller is None:
            if self._scope is not None:
                self._scope.cancel()
        elif not self._woken:
            self._woken = True
            os.eventfd_write(self._event, 1)

    def close(self) -> None:
        """Wake a waiter with ``trio.ClosedResourceError`` and close the descriptors (idempotent).

        Call it before (or right after) the socket itself is closed.
        """
        if self._closed:
            return
        self._closed = True
        if self._poller is not None:
            trio.lowlevel.notify_closing(self._wait_fd)
            self._poller.close()
            os.close(self._event)
        elif self._scope is not None:
            self._scope.cancel()
