"""runtime.inline.ReadingRole: the hand-off slots and the adaptive blocking policy."""

from __future__ import annotations

import pytest
import trio

from switchyard.runtime.inline import ReadingRole


async def test_hand_off_starts_a_reader_only_while_a_slot_is_free() -> None:
    started: list[str] = []

    async def read(tag: str) -> None:
        started.append(tag)

    async with trio.open_nursery() as nursery:
        role = ReadingRole(2, read, "r")
        assert not role.hand_off()  # no nursery yet
        role.nursery = nursery
        assert role.hand_off() and role.hand_off()
        assert not role.hand_off()  # both slots taken: the caller keeps reading
        role.release()
        assert role.hand_off()
        role.closed = True
        role.release()
        assert not role.hand_off() and not role.try_acquire()
    assert started == ["r", "r", "r"]


def test_mostly_blocks_follows_the_moving_average() -> None:
    async def read() -> None: ...

    role = ReadingRole(1, read)
    assert not role.mostly_blocks
    for _ in range(6):
        role.record(True)
    assert not role.mostly_blocks  # 1 - 0.9**6 = 0.47 < 0.5 < 1 - 0.9**7
    assert role.blocking == pytest.approx(1 - 0.9**6)
    role.record(True)
    assert role.mostly_blocks
    for _ in range(20):
        role.record(False)
    assert not role.mostly_blocks and role.blocking < 0.1


def test_at_least_one_slot() -> None:
    async def read() -> None: ...

    with pytest.raises(ValueError, match="max_blocked"):
        ReadingRole(0, read)
