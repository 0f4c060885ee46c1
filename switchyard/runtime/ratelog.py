"""Rate-limited logging for bad input and bad clients.

Every place that logs something a peer did wrong (a malformed frame, an oversize
message, a refused connection) logs through a :class:`RateLimitedLog`, so a flood
of garbage cannot flood the log: at most ``burst`` lines per ``period`` seconds per
logger, then one ``"N more ... suppressed"`` line when the next period starts (or
when :meth:`flush` is called). Lines carry no traceback unless the logger is at
DEBUG.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """At most ``burst`` records per ``period`` seconds, the rest counted and summarised.

    Not thread-safe; each actor or bridge owns its own instance. ``clock`` is
    injectable for tests.
    """

    def __init__(
        self,
        log: logging.Logger,
        *,
        burst: int = 10,
        period: float = 1.0,
        level: int = logging.WARNING,
        what: str = "bad-input messages",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or period <= 0:
            raise ValueError("burst must be >= 1 and period > 0")
        self.log = log
        self.burst = burst
        self.period = period
        self.level = level
        self.what = what
        self._clock = clock
        self._window_start = -float("inf")
        self._count = 0
        self.suppressed = 0  # in the current window, not yet reported
        self.total_suppressed = 0

    def __call__(self, msg: str, *args: object, exc: BaseException | None = None) -> bool:
        """Log ``msg % args`` unless over the limit; returns whether it was logged.

        ``exc`` is attached as a traceback only when the logger is enabled for DEBUG;
        otherwise its type and text are already expected in ``msg``.
        """
        now = self._clock()
        if now - self._window_start >= self.period:
            self.flush()
            self._window_start, self._count = now, 0
        if self._count >= self.burst:
            self.suppressed += 1
            self.total_suppressed += 1
            return False
        self._count += 1
        exc_info = exc if exc is not None and self.log.isEnabledFor(logging.DEBUG) else None
        self.log.log(self.level, msg, *args, exc_info=exc_info)
        return True

    def flush(self) -> None:
        """Emit the pending ``"N more ... suppressed"`` line, if any."""
        if self.suppressed:
            self.log.log(
                self.level, "%d more %s suppressed in the last %.0f s", self.suppressed, self.what, self.period
            )
            self.suppressed = 0
