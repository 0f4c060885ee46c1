"""What travels through a mailbox: the message plus how to answer it."""

from __future__ import annotations

import enum
from typing import Any

import trio

__all__ = ["Envelope", "Kind"]


class Kind(enum.Enum):
    TELL = "tell"
    ASK = "ask"
    STREAM = "stream"


class Envelope:
    """One mailbox entry.

    For ``ask`` the actor fills ``value`` or ``error`` and sets ``done``. For
    ``stream`` it sends items on ``replies`` (a rendezvous channel, so the producer
    runs at the consumer's pace) and the consumer may cancel ``scope`` to stop it.
    ``abandoned`` is set by a caller that stopped waiting (timeout, early exit), so
    the actor can skip work nobody will read.
    """

    __slots__ = ("abandoned", "done", "error", "kind", "message", "replies", "scope", "value")

    def __init__(self, message: Any, kind: Kind) -> None:
        self.message = message
        self.kind = kind
        self.done: trio.Event | None = None
        self.value: Any = None
        self.error: BaseException | None = None
        self.replies: trio.MemorySendChannel[Any] | None = None
        self.scope: trio.CancelScope | None = None
        self.abandoned = False

    def resolve(self, value: Any) -> None:
        self.value = value
        if self.done is not None:
            self.done.set()

    def fail(self, error: BaseException) -> None:
        """Answer this envelope with ``error`` (an ``ActorError`` for the caller)."""
        self.error = error
        if self.done is not None:
            self.done.set()
        if self.replies is not None:
            # The consumer finds ``error`` when the closed channel ends its iteration.
            self.replies.close()
