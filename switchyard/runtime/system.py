"""The actor system: a root supervisor, a registry of names, and stats.

Embed it in any Trio program::

    async with switchyard.open_system(name="app") as system:
        echo = await system.spawn(EchoActor, name="echo")
        print(await echo.ask("hi"))

Leaving the block shuts the system down gracefully (see :meth:`System.shutdown`).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from switchyard.runtime.actor import Actor, ActorSlot
from switchyard.runtime.config import build_config
from switchyard.runtime.errors import ActorNotFound, ConfigError
from switchyard.runtime.ref import ActorRef
from switchyard.runtime.stats import ActorStats, Metrics
from switchyard.runtime.supervisor import DEFAULT_POLICY, Restart, Strategy, Supervisor

__all__ = ["System", "current_system", "open_system"]

_current_system: contextvars.ContextVar[System] = contextvars.ContextVar("switchyard_system")
log = logging.getLogger("switchyard.system")


def current_system() -> System:
    """The system whose task tree the caller runs in (raises LookupError outside one)."""
    return _current_system.get()


class System:
    """A running actor system. Create it with :func:`open_system`."""

    def __init__(
        self,
        name: str,
        *,
        strategy: Strategy | str = DEFAULT_POLICY.strategy,
        max_restarts: int = DEFAULT_POLICY.max_restarts,
        within: float = DEFAULT_POLICY.within,
        grace_period: float = 5.0,
    ) -> None:
        self.name = name
        self.grace_period = grace_period
        self.root = Supervisor(name, strategy=strategy, max_restarts=max_restarts, within=within)
        self._slots: dict[str, ActorSlot] = {}
        self._supervisors: dict[str, Supervisor] = {name: self.root}
        self._shutdown_started = False
        self.stopping = trio.Event()
        #: Wall-clock start (``time.time()``), for uptime.
        self.started_at = time.time()
        #: Prometheus metrics; bridges call ``system.metrics.observe_request(actor, bridge, seconds)``.
        self.metrics = Metrics(self.stats)

    # -- registry ---------------------------------------------------------------
    def lookup(self, name: str) -> ActorRef:
        """The ref of the actor registered as ``name``; raises :class:`ActorNotFound`."""
        try:
            return self._slots[name].ref
        except KeyError:
            raise ActorNotFound(name, list(self._slots)) from None

    def names(self) -> list[str]:
        return list(self._slots)

    def supervisor(self, name: str) -> Supervisor:
        try:
            return self._supervisors[name]
        except KeyError:
            raise ActorNotFound(name, list(self._supervisors)) from None

    # -- spawning ---------------------------------------------------------------
    async def spawn(
        self,
        actor_class: type[Actor],
        *,
        name: str,
        config: Any = None,
        restart: Restart | str = Restart.PERMANENT,
        mailbox_capacity: int | None = None,
        supervisor: str | Supervisor | None = None,
    ) -> ActorRef:
        """Start ``actor_class`` under ``supervisor`` (default: the root) as ``name``.

        Returns once the actor's ``on_start`` has finished (its sockets bound, its
        models loaded); if ``on_start`` raises, so does ``spawn`` and nothing is
        registered. ``config`` may be an instance of ``actor_class.Config``, a dict
        validated into it, or ``None`` for its defaults.
        """
        if name in self._slots or self._supervisors.get(name, self.root) is not self.root:
            raise ConfigError(f"an actor or supervisor named {name!r} already exists")
        capacity = mailbox_capacity if mailbox_capacity is not None else actor_class.mailbox_capacity
        if capacity < 1:
            raise ConfigError(f"mailbox_capacity of {name!r} must be >= 1")
        slot = ActorSlot(
            name=name,
            actor_class=actor_class,
            config=build_config(actor_class.Config, config, where=f"actor {name!r}"),
            capacity=capacity,
            system=self,
        )
        self._slots[name] = slot
        try:
            await self._parent(supervisor).add_child(slot, restart)
        except BaseException:
            del self._slots[name]
            raise
        return slot.ref

    async def spawn_supervisor(
        self,
        name: str,
        *,
        strategy: Strategy | str = DEFAULT_POLICY.strategy,
        max_restarts: int = DEFAULT_POLICY.max_restarts,
        within: float = DEFAULT_POLICY.within,
        restart: Restart | str = Restart.PERMANENT,
        supervisor: str | Supervisor | None = None,
    ) -> Supervisor:
        """Start a nested supervisor; spawn into it with ``spawn(..., supervisor=name)``."""
        if name in self._slots or name in self._supervisors:
            raise ConfigError(f"an actor or supervisor named {name!r} already exists")
        child = Supervisor(name, strategy=strategy, max_restarts=max_restarts, within=within)
        self._supervisors[name] = child
        try:
            await self._parent(supervisor).add_child(child, restart)
        except BaseException:
            del self._supervisors[name]
            raise
        return child

    def _parent(self, supervisor: str | Supervisor | None) -> Supervisor:
        if supervisor is None:
            return self.root
        if isinstance(supervisor, Supervisor):
            return supervisor
        return self.supervisor(supervisor)

    # -- stats --------------------------------------------------------------------
    def stats(self) -> dict[str, ActorStats]:
        """A snapshot of every actor's counters, by name."""
        return {name: slot.snapshot() for name, slot in self._slots.items()}

    # -- shutdown -----------------------------------------------------------------
    async def shutdown(self, grace_period: float | None = None) -> None:
        """Stop every actor in reverse start order, each draining its mailbox and
        running ``on_stop``; whatever is still running after ``grace_period``
        seconds (default: the system's) is cancelled. Safe to call more than once.
        """
        if self._shutdown_started:
            await self.stopping.wait()
            return
        self._shutdown_started = True
        grace = self.grace_period if grace_period is None else grace_period
        log.info("system %r shutting down (grace %g s)", self.name, grace)
        with trio.CancelScope(shield=True):
            with trio.move_on_after(grace) as scope:
                await self.root.shutdown()
        if scope.cancelled_caught:
            log.warning("grace period of %g s ran out; cancelling what is left", grace)
        self.stopping.set()


@asynccontextmanager
async def open_system(
    name: str = "switchyard",
    *,
    strategy: Strategy | str = DEFAULT_POLICY.strategy,
    max_restarts: int = DEFAULT_POLICY.max_restarts,
    within: float = DEFAULT_POLICY.within,
    grace_period: float = 5.0,
) -> AsyncIterator[System]:
    """Run an actor system for the length of the ``async with`` block.

    The root supervisor uses ``strategy`` with at most ``max_restarts`` restarts in
    ``within`` seconds; past that it raises
    :class:`~switchyard.runtime.errors.SupervisorEscalation` out of this block.
    On exit (normal, exception or cancellation) actors get ``grace_period`` seconds
    to finish in-flight work before they are cancelled.
    """
    system = System(name, strategy=strategy, max_restarts=max_restarts, within=within, grace_period=grace_period)
    token = _current_system.set(system)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(system.root.run)
            try:
                yield system
            finally:
                await system.shutdown()
                nursery.cancel_scope.cancel()
    finally:
        _current_system.reset(token)
