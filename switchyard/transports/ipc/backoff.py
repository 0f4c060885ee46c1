"""The IPC client's reconnect policy: growing, capped, jittered delays."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Reconnect delays: ``initial`` x ``multiplier`` per failure, capped, with jitter."""

    def __init__(
        self,
        initial: float = 0.5,
        multiplier: float = 1.5,
        maximum: float = 15.0,
        jitter: float = 0.1,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if initial < 0 or multiplier < 1 or maximum < initial or not 0 <= jitter < 1:
            raise ValueError("need 0 <= initial <= maximum, multiplier >= 1, 0 <= jitter < 1")
        self.initial, self.multiplier, self.maximum, self.jitter = initial, multiplier, maximum, jitter
        self._rng = rng
        self._current = initial

    def next(self) -> float:
        """The next delay (seconds); each call grows the base delay."""
        base = min(self._current, self.maximum)
        self._current = min(self._current * self.multiplier, self.maximum)
        return min(self.maximum, base * (1 + self.jitter * (2 * self._rng() - 1)))

    def reset(self) -> None:
        self._current = self.initial
