"""Per-method call statistics of an IPC server (``ipc.stats``)."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["MethodStats"]


@attrs.define
class MethodStats:
    """Calls, errors and durations of one method; :meth:`snapshot` is what ``ipc.stats`` shows."""

    calls: int = 0
    errors: int = 0
    total_seconds: float = 0.0
    max_seconds: float = 0.0

    def record(self, seconds: float, ok: bool) -> None:
        self.calls += 1
        self.errors += not ok
        self.total_seconds += seconds
        self.max_seconds = max(self.max_seconds, seconds)

    def snapshot(self) -> dict[str, Any]:
        mean = self.total_seconds / self.calls if self.calls else 0.0
        return {
            "calls": self.calls,
            "errors": self.errors,
            "mean_ms": round(mean * 1000, 3),
            "max_ms": round(self.max_seconds * 1000, 3),
        }
