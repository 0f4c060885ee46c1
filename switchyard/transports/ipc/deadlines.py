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
    """One request waiting for its answer.

    :meth:`finish` or :meth:`fail` settles it once (later calls are ignored) and wakes
    the caller if it is parked in :meth:`park`. No event or closure is made per
    request: the caller's task itself is parked and rescheduled.
    """

    __slots__ = ("conn", "deadline", "done", "error", "id", "method", "task", "timeout", "value")

    def __init__(self, method: str, id: str, conn: ClientConnection, timeout: float, deadline: float) -> None:
        self.method = method
        self.id = id
        self.conn = conn
        self.timeout = timeout
        self.deadline = deadline
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        #: The caller's task while it is parked in :meth:`park`.
        self.task: trio.lowlevel.Task | None = None

    def finish(self, value: Any) -> None:
        if not self.done:
            self.done = True
            self.value = value
            self.wake()

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.done = True
            self.error = error
            self.wake()

    def wake(self) -> None:
        """Reschedule the parked caller (it re-checks what it waits for); no-op if not parked."""
        task = self.task
        if task is not None:
            self.task = None
            self.conn.parked -= 1
            trio.lowlevel.reschedule(task)

    async def park(self) -> None:
        """Sleep until :meth:`wake` (or a cancel); the caller re-checks its condition after."""
        self.task = trio.lowlevel.current_task()
        self.conn.parked += 1
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        self.task = None
        self.conn.parked -= 1
        return trio.lowlevel.Abort.SUCCEEDED


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
        while heap and heap[0][2].done:
            heapq.heappop(heap)

    async def run(self) -> None:
        heap = self._heap
        while True:
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as self._scope:
                await trio.sleep_forever()
            now = trio.current_time()
            while heap and (heap[0][2].done or heap[0][0] <= now):
                _, _, pending = heapq.heappop(heap)
                if not pending.done:
                    self._on_expired(pending)
