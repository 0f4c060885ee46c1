"""runtime.stats.timed: a handler keeps its shape and every call is observed once."""

from __future__ import annotations

import pytest
import trio

from switchyard.runtime.stats import timed


def test_a_plain_handler_stays_plain_and_is_observed() -> None:
    seen: list[float] = []
    wrapped = timed(lambda x: x * 2, seen.append)
    assert wrapped(21) == 42
    assert len(seen) == 1 and seen[0] >= 0


async def test_an_async_handler_is_observed_to_its_end_even_when_it_raises() -> None:
    seen: list[float] = []

    async def slow(x: int) -> int:
        await trio.sleep(0.02)
        if x < 0:
            raise ValueError("negative")
        return x

    wrapped = timed(slow, seen.append)
    assert await wrapped(3) == 3
    with pytest.raises(ValueError):
        await wrapped(-1)
    assert len(seen) == 2 and all(s >= 0.015 for s in seen)
