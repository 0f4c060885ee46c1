"""Request timeouts of an IPC client without a cancel scope per request."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from switchyard.transports.ipc.client_connection import ClientConnection

__all__ = ["Deadlines", "Pending"]


class Pending:
    """One request waiting for its answer: set :attr:`value` or :meth:`fail` it, then :attr:`event` fires."""

    __slots__ = ("conn", "deadline", "error", "event", "id", "method", "timeout", "value")

    def __init__(self, method: str, id: str, conn: ClientConnection, timeout: float, deadline: float) -> None:
        self.method = method
        self.id = id
        self.conn = conn
        self.timeout = timeout
        self.deadline = deadline
        self.event = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        if not self.event.is_set():
            self.error = error
            self.event.set()


class Deadlines:
    """Request timeouts without a cancel scope per request.

    Requests are the hot path and a cancel scope costs more than the rest of the
    bookkeeping together, so pending requests go into a heap by deadline and one
    task (:meth:`run`) fails the expired ones. Answered requests are popped off the
    top as they complete, so the heap stays as small as what is really in flight
    (plus whatever waits behind a longer timeout).
    """

    def __init__(self, on_expired: Callable[[Pending], None]) -> None:
        self._heap: list[tuple[float, int, Pending]] = []
        self._seq = itertools.count()
        self._scope: trio.CancelScope | None = None
        self._on_expired = on_expired

    def add(self, pending: Pending) -> None:
        heapq.heappush(self._heap, (pending.deadline, next(self._seq), pending))
        scope = self._scope
        if scope is not None and pending.deadline < scope.deadline:
            scope.deadline = pending.deadline

    def collect(self) -> None:
        heap = self._heap
        while heap and heap[0][2].event.is_set():
            heapq.heappop(heap)

    async def run(self) -> None:
        heap = self._heap
        while True:
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as self._scope:
                await trio.sleep_forever()
            now = trio.current_time()
            while heap and (heap[0][2].event.is_set() or heap[0][0] <= now):
                _, _, pending = heapq.heappop(heap)
                if not pending.event.is_set():
                    self._on_expired(pending)
