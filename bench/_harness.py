"""Run a benchmark's server in its own process (the client measures from this one)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def server_process(target: Callable[..., Any], *args: Any, timeout: float = 60.0) -> Iterator[Any]:
    """Start ``target(*args, ready)`` in a spawned process; yield it once it sets ``ready``.

    The process is killed and joined on exit, whatever happens.
    """
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=target, args=(*args, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(timeout):
            raise RuntimeError(f"{getattr(target, '__name__', target)}{args} did not start within {timeout:g} s")
        yield proc
    finally:
        proc.kill()
        proc.join()
