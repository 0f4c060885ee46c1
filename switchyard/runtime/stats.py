"""Per-actor counters, readable through ``System.stats()``."""

from __future__ import annotations

import attrs


@attrs.define
class ActorCounters:
    """Mutable counters kept by the runtime for one named actor (across restarts)."""

    handled: int = 0
    errors: int = 0
    restarts: int = 0
    last_error: str | None = None
    state: str = "starting"

    def record_error(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"


@attrs.frozen
class ActorStats:
    """A snapshot of one actor's counters. Safe to keep; it does not change."""

    name: str
    kind: str
    state: str
    handled: int
    errors: int
    restarts: int
    mailbox_depth: int
    mailbox_capacity: int
    last_error: str | None

    def as_dict(self) -> dict[str, object]:
        return attrs.asdict(self)
