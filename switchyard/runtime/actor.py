"""``Actor``: state behind a bounded mailbox, one message at a time.

Subclass :class:`Actor`, give it a ``Config`` (a frozen attrs class) and implement
``handle`` and/or ``handle_stream``. The runtime owns the rest: the mailbox, the
incarnation's nursery and exit stack, counters, and what happens on errors.

Error rules a caller may rely on:

* An exception raised by ``handle``/``handle_stream`` while serving ``ask`` or
  ``stream`` goes back to that caller as :class:`ActorError`; for ``tell`` it is
  logged and counted. Either way the actor goes on with the next message.
* :class:`Crash` raised by a handler, or any exception escaping a task in
  ``self.nursery`` or ``on_start``, ends the incarnation: the supervisor decides
  whether to restart it. Messages still queued wait for the next incarnation; the
  caller whose message was in hand gets an ``ActorError``.

State discipline (what makes an actor safe without locks):

* An actor's state (its attributes) is touched only by the actor's own tasks:
  the mailbox task that runs ``handle``/``handle_stream``, ``on_start``/``on_stop``,
  and tasks started in ``self.nursery``. Other code reaches it through its
  mailbox (``tell``/``ask``/``stream``), never by calling its methods or setting
  its attributes.
* Trio switches tasks only at ``await``. A bridge handler or session task running
  in ``self.nursery`` may read and update the actor's state between awaits: the
  update is atomic with respect to every other task of the actor. Such a task must
  not assume state it read before an ``await`` is unchanged after it; where code
  relies on this, it says so in a comment.
* Blocking work never touches actor state from a thread: ``trio.to_thread`` gets
  plain values in and returns plain values out.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import attrs
import trio

from switchyard.runtime.envelope import Envelope, Kind
from switchyard.runtime.errors import ActorError, ActorStopped, Crash, single_cause
from switchyard.runtime.ref import ActorRef
from switchyard.runtime.stats import ActorCounters, ActorStats

__all__ = ["Actor", "ActorSlot", "NoConfig"]

if TYPE_CHECKING:
    from switchyard.runtime.system import System

T = TypeVar("T")


@attrs.frozen
class NoConfig:
    """Config of an actor that takes none."""


class Actor:
    """Base class of every actor. See the module docstring for the error rules."""

    Config: ClassVar[type] = NoConfig
    #: Default mailbox capacity; a manifest or ``spawn`` may override it.
    mailbox_capacity: ClassVar[int] = 64

    def __init__(self, *, name: str, config: Any, system: System, logger: logging.Logger) -> None:
        self.name = name
        self.config = config
        self.system = system
        self.log = logger
        self._nursery: trio.Nursery | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._mailbox_scope: trio.CancelScope | None = None

    # -- for subclasses -------------------------------------------------------
    @property
    def nursery(self) -> trio.Nursery:
        """This incarnation's nursery: background tasks live and die with the actor."""
        if self._nursery is None:
            raise RuntimeError("the actor's nursery exists only while it runs")
        return self._nursery

    async def enter(self, manager: AbstractAsyncContextManager[T]) -> T:
        """Enter ``manager`` now; it is exited when this incarnation ends, crash or not."""
        if self._exit_stack is None:
            raise RuntimeError("enter() is available only while the actor runs")
        return await self._exit_stack.enter_async_context(manager)

    def stop(self) -> None:
        """End this incarnation normally after the current message: ``on_stop`` runs,
        then the supervisor applies the restart type (a ``permanent`` actor is started
        again; ``transient`` and ``temporary`` ones stop for good).
        """
        if self._mailbox_scope is not None:
            self._mailbox_scope.cancel()

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Checks of a built config that need more than one field or the file system.

        Called by the manifest loader (so by ``switchyard check`` and ``run``) after
        ``config`` passed its field validators; raise ``ValueError`` with a message
        naming the key. The default checks nothing.
        """

    async def on_start(self) -> None:
        """Acquire resources (bind sockets, load models). The actor is ready when this returns."""

    async def on_stop(self) -> None:
        """Graceful stop: stop accepting work and let in-flight work finish.

        Runs only on an orderly shutdown, within the system's grace period; after it
        the incarnation's nursery is cancelled and its exit stack closed.
        """

    async def handle(self, message: Any) -> Any:
        """Serve one ``tell``/``ask`` message; the return value answers ``ask``."""
        raise NotImplementedError(f"{type(self).__name__} does not handle messages")

    def handle_stream(self, message: Any) -> AsyncIterator[Any]:
        """Serve one ``stream`` message: an async generator of replies."""
        raise NotImplementedError(f"{type(self).__name__} does not stream")


class ActorSlot:
    """Everything that outlives one incarnation of a named actor: mailbox, ref, counters."""

    def __init__(self, *, name: str, actor_class: type[Actor], config: Any, capacity: int, system: System) -> None:
        self.name = name
        self.actor_class = actor_class
        self.config = config
        self.capacity = capacity
        self.system = system
        self.send_channel, self.receive_channel = trio.open_memory_channel[Envelope](capacity)
        self.ref = ActorRef(self)
        self.counters = ActorCounters()
        self.log = logging.getLogger(f"switchyard.actor.{name}")
        self.incarnations = 0

    @property
    def kind(self) -> str:
        cls = self.actor_class
        return getattr(cls, "kind", None) or f"{cls.__module__}:{cls.__qualname__}"

    def snapshot(self) -> ActorStats:
        c = self.counters
        depth = self.receive_channel.statistics().current_buffer_used
        return ActorStats(
            name=self.name,
            kind=self.kind,
            state=c.state,
            handled=c.handled,
            errors=c.errors,
            restarts=c.restarts,
            mailbox_depth=depth,
            mailbox_capacity=self.capacity,
            last_error=c.last_error,
        )

    def request_stop(self) -> None:
        """Stop accepting messages; the running incarnation drains its mailbox and stops."""
        self.send_channel.close()

    def close_for_good(self, reason: str) -> None:
        """The actor will not run again: refuse new messages and fail the queued ones."""
        self.send_channel.close()
        self.counters.state = "stopped"
        while True:
            try:
                envelope = self.receive_channel.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            envelope.fail(ActorStopped(self.name, reason))

    async def run(self, *, task_status: trio.TaskStatus[ActorRef] = trio.TASK_STATUS_IGNORED) -> None:
        """Run one incarnation; returns on orderly stop, raises on crash."""
        self.incarnations += 1
        if self.incarnations > 1:
            self.counters.restarts += 1
        self.counters.state = "starting"
        actor = self.actor_class(name=self.name, config=self.config, system=self.system, logger=self.log)
        current: list[Envelope | None] = [None]
        try:
            async with AsyncExitStack() as stack:
                actor._exit_stack = stack
                async with trio.open_nursery() as nursery:
                    actor._nursery = nursery
                    await actor.on_start()
                    self.counters.state = "running"
                    task_status.started(self.ref)
                    with trio.CancelScope() as actor._mailbox_scope:
                        await self._serve_mailbox(actor, current)
                    self.counters.state = "stopping"
                    await actor.on_stop()
                    nursery.cancel_scope.cancel()
            self.counters.state = "stopped"
        except BaseException as raised:
            exc = single_cause(raised)
            cancelled = isinstance(exc, trio.Cancelled)
            self.counters.state = "stopped" if cancelled else "crashed"
            if not cancelled:
                self.counters.record_error(exc)
            envelope = current[0]
            if envelope is not None:
                envelope.fail(ActorError(self.name, exc, f"actor stopped while handling this message ({exc!r})"))
            if exc is raised:
                raise
            raise exc from None
        finally:
            actor._nursery = None
            actor._exit_stack = None

    async def _serve_mailbox(self, actor: Actor, current: list[Envelope | None]) -> None:
        receive = self.receive_channel
        counters = self.counters
        since_checkpoint = 0
        while True:
            # Take queued messages without a scheduler round trip, but still yield
            # every so often so a busy actor cannot starve the other tasks.
            try:
                if since_checkpoint >= 32:
                    raise trio.WouldBlock
                envelope = receive.receive_nowait()
                since_checkpoint += 1
            except trio.WouldBlock:
                since_checkpoint = 0
                try:
                    envelope = await receive.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            if envelope.abandoned:
                continue
            current[0] = envelope
            kind = envelope.kind
            if kind is Kind.STREAM:
                await self._serve_stream(actor, envelope)
            else:
                try:
                    value = await actor.handle(envelope.message)
                except Crash:
                    raise
                except Exception as exc:
                    counters.record_error(exc)
                    if kind is Kind.ASK:
                        envelope.fail(ActorError(self.name, exc))
                    else:
                        self.log.error("%s handling %s: %s", type(exc).__name__, _describe(envelope.message), exc)
                else:
                    if kind is Kind.ASK:
                        envelope.resolve(value)
            counters.handled += 1
            current[0] = None

    async def _serve_stream(self, actor: Actor, envelope: Envelope) -> None:
        replies = envelope.replies
        assert replies is not None
        with trio.CancelScope() as scope:
            envelope.scope = scope
            if envelope.abandoned:
                scope.cancel()
            try:
                generator = actor.handle_stream(envelope.message)
                try:
                    async for item in generator:
                        await replies.send(item)
                finally:
                    aclose = getattr(generator, "aclose", None)
                    if aclose is not None:
                        with trio.CancelScope(shield=True):
                            await aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the consumer left early
            except Crash:
                raise
            except Exception as exc:
                self.counters.record_error(exc)
                envelope.fail(ActorError(self.name, exc))
        replies.close()
        envelope.scope = None


def _describe(message: Any) -> str:
    text = repr(message)
    return text if len(text) <= 120 else text[:117] + "..."
