"""OTP-style supervisors on Trio nurseries.

A :class:`Supervisor` starts its children in order, watches them, and restarts them
by its strategy:

* ``one_for_one``: only the child that exited is restarted;
* ``one_for_all``: every other child is stopped (last started first) and all are
  started again in order;
* ``rest_for_one``: the children started after the one that exited are stopped and
  they and it are started again in order.

Each child has a restart type: ``permanent`` (always restarted), ``transient``
(restarted only after a crash) or ``temporary`` (never restarted). More than
``max_restarts`` restarts within ``within`` seconds make the supervisor stop all its
children and raise :class:`SupervisorEscalation` to its parent (for the root
supervisor, out of ``open_system``). Every restart is logged with its cause.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from typing import Any, Protocol

import attrs
import trio

from switchyard.runtime.errors import ConfigError, SupervisorEscalation, single_cause

__all__ = ["DEFAULT_POLICY", "Child", "Restart", "RestartPolicy", "Strategy", "Supervisor", "parse_enum"]


class Strategy(str, enum.Enum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class Restart(str, enum.Enum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


@attrs.frozen
class RestartPolicy:
    """How a supervisor restarts: its strategy and restart intensity.

    More than ``max_restarts`` restarts within ``within`` seconds make it give up.
    :data:`DEFAULT_POLICY` is the one set of defaults every API and manifest uses.
    """

    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    within: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))


DEFAULT_POLICY = RestartPolicy()


def parse_enum(enum_type: type[enum.Enum], value: Any, what: str) -> Any:
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(value)
    except ValueError:
        known = ", ".join(member.value for member in enum_type)
        raise ConfigError(f"{what} must be one of {known}, not {value!r}") from None


class Child(Protocol):
    """What a supervisor can run: an actor slot or a nested supervisor."""

    name: str

    async def run(self, *, task_status: trio.TaskStatus[Any] = ...) -> None: ...

    def request_stop(self) -> None: ...

    def close_for_good(self, reason: str) -> None: ...


@attrs.define(eq=False)
class _Running:
    scope: trio.CancelScope
    done: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class _ChildEntry:
    child: Child
    restart: Restart
    generation: int = 0
    running: _Running | None = None


class Supervisor:
    """Starts, watches and restarts children. Also usable as a child of another supervisor."""

    def __init__(
        self,
        name: str,
        *,
        strategy: Strategy | str = DEFAULT_POLICY.strategy,
        max_restarts: int = DEFAULT_POLICY.max_restarts,
        within: float = DEFAULT_POLICY.within,
    ) -> None:
        if max_restarts < 0 or within <= 0:
            raise ConfigError("max_restarts must be >= 0 and within > 0")
        self.name = name
        self.strategy = parse_enum(Strategy, strategy, "strategy")
        self.max_restarts = max_restarts
        self.within = within
        self.log = logging.getLogger(f"switchyard.supervisor.{name}")
        self._entries: list[_ChildEntry] = []
        self._restart_times: deque[float] = deque()
        self._nursery: trio.Nursery | None = None
        self._exits: trio.MemorySendChannel[tuple[_ChildEntry, int, BaseException | None]] | None = None
        self._lock = trio.Lock()
        self._stopping = False
        self.restarts = 0

    def __repr__(self) -> str:
        return f"<Supervisor {self.name!r} {self.strategy.value}>"

    @property
    def children(self) -> list[str]:
        return [entry.child.name for entry in self._entries]

    # -- Child protocol (so supervisors nest) ---------------------------------
    async def run(self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the children in order, then supervise until stopped or escalating."""
        self._stopping = False
        self._restart_times.clear()
        send, receive = trio.open_memory_channel[tuple[_ChildEntry, int, BaseException | None]](math.inf)
        self._exits = send
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                async with self._lock:
                    for entry in list(self._entries):
                        await self._start(entry)
                task_status.started(self)
                await self._supervise(receive)
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self._exits = None
            for entry in self._entries:
                entry.running = None

    def request_stop(self) -> None:
        """Orderly stop: children are asked to stop, last started first."""
        if self._nursery is None:
            return
        self._nursery.start_soon(self.shutdown)

    def close_for_good(self, reason: str) -> None:
        for entry in self._entries:
            entry.child.close_for_good(reason)

    # -- public API -------------------------------------------------------------
    async def add_child(self, child: Child, restart: Restart | str = Restart.PERMANENT) -> Any:
        """Add ``child`` and start it now if the supervisor runs; returns what it started with."""
        entry = _ChildEntry(child=child, restart=parse_enum(Restart, restart, "restart"))
        async with self._lock:
            self._entries.append(entry)
            if self._nursery is None:
                return None
            try:
                return await self._start(entry)
            except BaseException:
                self._entries.remove(entry)
                raise

    async def shutdown(self) -> None:
        """Stop every child, last started first, waiting for each; then stop supervising.

        Bound the wait with an enclosing cancel scope (the system applies its grace
        period); whatever has not stopped by then is cancelled.
        """
        self._stopping = True
        for entry in reversed(self._entries):
            running = entry.running
            if running is None:
                continue
            entry.child.request_stop()
            await running.done.wait()
        if self._exits is not None:
            self._exits.close()

    # -- machinery --------------------------------------------------------------
    async def _start(self, entry: _ChildEntry) -> Any:
        assert self._nursery is not None
        entry.generation += 1
        running = _Running(scope=trio.CancelScope())
        entry.running = running
        try:
            return await self._nursery.start(self._child_task, entry, entry.generation, running)
        except BaseException:
            entry.running = None
            running.done.set()
            raise

    async def _child_task(
        self, entry: _ChildEntry, generation: int, running: _Running, *, task_status: trio.TaskStatus[Any]
    ) -> None:
        outcome: BaseException | None = None
        started = False

        class _Status:
            def started(self, value: Any = None) -> None:
                nonlocal started
                started = True
                task_status.started(value)

        try:
            with running.scope:
                await entry.child.run(task_status=_Status())
        except Exception as exc:
            if not started:
                raise
            outcome = single_cause(exc)
        finally:
            running.done.set()
        if running.scope.cancelled_caught:
            return  # stopped on purpose by this supervisor
        if self._exits is not None:
            self._exits.send_nowait((entry, generation, outcome))

    async def _stop(self, entry: _ChildEntry) -> None:
        running = entry.running
        if running is None:
            return
        running.scope.cancel()
        await running.done.wait()
        entry.running = None

    async def _supervise(self, exits: trio.MemoryReceiveChannel[tuple[_ChildEntry, int, BaseException | None]]) -> None:
        async for entry, generation, outcome in exits:
            if generation != entry.generation or self._stopping:
                continue
            entry.running = None
            crashed = outcome is not None
            if entry.restart is Restart.TEMPORARY or (entry.restart is Restart.TRANSIENT and not crashed):
                how = f"crashed ({outcome!r})" if crashed else "exited"
                self.log.info("child %r %s; %s child not restarted", entry.child.name, how, entry.restart.value)
                async with self._lock:
                    self._entries.remove(entry)
                entry.child.close_for_good(f"{how} and is {entry.restart.value}")
                continue
            async with self._lock:
                await self._restart_after(entry, outcome)

    def _note_restart(self, entry: _ChildEntry, cause: BaseException | None) -> None:
        now = trio.current_time()
        self._restart_times.append(now)
        while self._restart_times and self._restart_times[0] < now - self.within:
            self._restart_times.popleft()
        if len(self._restart_times) > self.max_restarts:
            self.log.error(
                "restart intensity exceeded (%d in %g s) for child %r: giving up",
                len(self._restart_times),
                self.within,
                entry.child.name,
            )
            raise SupervisorEscalation(self.name, entry.child.name, self.max_restarts, self.within) from cause
        self.restarts += 1
        self.log.warning(
            "restarting child %r (%s, strategy %s) after %s",
            entry.child.name,
            entry.restart.value,
            self.strategy.value,
            f"crash: {cause!r}" if cause is not None else "normal exit",
        )

    async def _restart_after(self, failed: _ChildEntry, cause: BaseException | None) -> None:
        index = self._entries.index(failed)
        if self.strategy is Strategy.ONE_FOR_ONE:
            group = [failed]
        elif self.strategy is Strategy.ONE_FOR_ALL:
            group = list(self._entries)
        else:
            group = self._entries[index:]
        while True:
            self._note_restart(failed, cause)
            for entry in reversed(group):
                if entry is not failed:
                    await self._stop(entry)
            try:
                for entry in group:
                    if entry.running is None:
                        await self._start(entry)
                return
            except Exception as exc:  # a child failed to start again: counts as another failure
                cause = exc
                self.log.error("child failed to restart: %r", exc)
