"""Per-actor counters (``System.stats()``) and the Prometheus metrics built on them."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["ActorCounters", "ActorStats", "Metrics", "timed"]


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


class Metrics:
    """Prometheus metrics of one system: the actors' counters plus request latencies.

    The counters (handled, errors, restarts, mailbox depth and capacity) are read
    from ``stats`` at scrape time, so nothing is counted twice. Bridges report
    each served request with :meth:`observe_request`; :meth:`render` gives the
    Prometheus text format. Every name starts with ``switchyard_`` and carries an
    ``actor`` label. Each system has its own registry (no global state).
    """

    #: Histogram buckets for request latency, seconds (50 us .. 10 s).
    LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 10)

    def __init__(self, stats: Callable[[], dict[str, ActorStats]]) -> None:
        from prometheus_client import CollectorRegistry, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self._latency = Histogram(
            "switchyard_request_seconds",
            "Time from a bridge receiving a request to its reply being sent",
            ["actor", "bridge"],
            buckets=self.LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_ActorCollector(stats))

    def observe_request(self, actor: str, bridge: str, seconds: float) -> None:
        """Record one request served by ``actor`` over ``bridge`` (e.g. ``"zmq_rep"``) in ``seconds``."""
        self._latency.labels(actor=actor, bridge=bridge).observe(seconds)

    def request_observer(self, actor: str, bridge: str) -> Callable[[float], None]:
        """``observe(seconds)`` for one (actor, bridge) pair: the label lookup done once, for hot paths."""
        observe: Callable[[float], None] = self._latency.labels(actor=actor, bridge=bridge).observe
        return observe

    def render(self) -> bytes:
        """The Prometheus text exposition format (``text/plain; version=0.0.4``)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _ActorCollector:
    def __init__(self, stats: Callable[[], dict[str, ActorStats]]) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snapshot = list(self._stats().values())
        families: list[tuple[Any, str, str, Callable[[ActorStats], float]]] = [
            (CounterMetricFamily, "switchyard_messages_handled", "Messages handled", lambda s: s.handled),
            (CounterMetricFamily, "switchyard_errors", "Handler errors", lambda s: s.errors),
            (CounterMetricFamily, "switchyard_restarts", "Restarts by the supervisor", lambda s: s.restarts),
            (
                GaugeMetricFamily,
                "switchyard_mailbox_depth",
                "Messages waiting in the mailbox",
                lambda s: s.mailbox_depth,
            ),
            (GaugeMetricFamily, "switchyard_mailbox_capacity", "Mailbox bound", lambda s: s.mailbox_capacity),
            (GaugeMetricFamily, "switchyard_actor_up", "1 while the actor is running", lambda s: s.state == "running"),
        ]
        for family_type, name, text, value in families:
            family = family_type(name, text, labels=["actor", "kind"])
            for stat in snapshot:
                family.add_metric([stat.name, stat.kind], float(value(stat)))
            yield family


def timed(handler: Callable[..., Any], observe: Callable[[float], None]) -> Callable[..., Any]:
    """``handler`` wrapped so each call's duration (seconds) goes to ``observe``.

    Keeps ``handler``'s shape: a plain result is timed and returned as it is (no
    coroutine is added); an awaitable result is returned as a coroutine timed to its
    end, also when it raises. Bridges run handlers of either shape, so an actor wraps
    the handler it gives its bridge: ``timed(self._serve, metrics.request_observer(...))``.
    """
    clock = time.perf_counter

    async def finish(awaitable: Awaitable[Any], started: float) -> Any:
        try:
            return await awaitable
        finally:
            observe(clock() - started)

    def call(*args: Any) -> Any:
        started = clock()
        result = handler(*args)
        if inspect.isawaitable(result):
            return finish(result, started)
        observe(clock() - started)
        return result

    return call
