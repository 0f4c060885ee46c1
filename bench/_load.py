"""A loaded host on demand: a bounded CPU burner for the "loaded" bench configuration.

Every benchmark row is measured twice, quietly and with one core kept busy, because
a path that adds thread hops or scheduler trips per message loses far more than its
baseline when the host is loaded. Use it around the measurement of both the row and
its baseline, so the ratio stays a same-run ratio::

    from bench._load import cpu_burner

    with cpu_burner(seconds=60):        # one core busy for at most 60 s
        base = measure_baseline()
        ours = measure_switchyard()
    print(ours / base)

API a caller may rely on:

* ``cpu_burner(seconds=..., core=None, processes=1)`` is a context manager. It starts
  ``processes`` separate Python processes, each a pure busy loop (no I/O, no memory
  growth) pinned with ``sched_setaffinity`` to ``core`` (default: the host's last
  allowed CPU; ``core=-1`` leaves it unpinned), and yields a :class:`Burner`.
* Bounded: each process stops by itself once ``seconds`` have passed, even if the
  caller is killed; leaving the block terminates and reaps them at once.
* ``Burner.alive()`` tells whether every burner still runs (a run that outlived
  ``seconds`` was no longer loaded: check it at the end of a measurement).
* ``loaded_from_env()`` is True when ``SWITCHYARD_BENCH_LOADED=1``: ``python -m bench``
  sets it for the loaded pass it runs with a burner of its own, so a module can label
  its output; modules need not start a burner themselves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import attrs

__all__ = ["ENV_LOADED", "Burner", "cpu_burner", "loaded_from_env"]

#: Set to ``1`` in the environment of a benchmark module run under a burner.
ENV_LOADED = "SWITCHYARD_BENCH_LOADED"

_LOOP = """
import os, sys, time
core = int(sys.argv[2])
if core >= 0:
    os.sched_setaffinity(0, {core})
deadline = time.monotonic() + float(sys.argv[1])
x = 0
while True:
    for _ in range(100000):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
    if time.monotonic() >= deadline:
        break
"""


@attrs.define
class Burner:
    """The running burner processes (see :func:`cpu_burner`)."""

    processes: list[subprocess.Popen[bytes]]
    core: int

    def alive(self) -> bool:
        """True while every burner process still runs."""
        return all(p.poll() is None for p in self.processes)


def _default_core() -> int:
    try:
        return max(os.sched_getaffinity(0))
    except (AttributeError, OSError, ValueError):
        return -1


@contextmanager
def cpu_burner(seconds: float = 120.0, *, core: int | None = None, processes: int = 1) -> Iterator[Burner]:
    """Keep ``core`` busy for at most ``seconds`` while the block runs (see module doc)."""
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    if processes < 1:
        raise ValueError("processes must be at least 1")
    pinned = _default_core() if core is None else core
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(processes):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _LOOP, str(seconds), str(pinned)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                )
            )
        yield Burner(procs, pinned)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()


def loaded_from_env() -> bool:
    """True in a benchmark module that ``python -m bench`` runs under its burner."""
    return os.environ.get(ENV_LOADED) == "1"
