"""Supervision: strategies, restart types, intensity and escalation, nesting."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from switchyard.runtime import Actor, ActorError, ActorStopped, Crash, SupervisorEscalation, open_system
from switchyard.testing import run_system

STARTS: dict[str, int] = {}


class Counted(Actor):
    """Counts its incarnations; "crash" crashes it."""

    async def on_start(self) -> None:
        STARTS[self.name] = STARTS.get(self.name, 0) + 1

    async def handle(self, message: str) -> object:
        if message == "crash":
            raise Crash("asked to crash")
        return STARTS[self.name]


@pytest.fixture(autouse=True)
def _reset() -> None:
    STARTS.clear()


async def _until(predicate, timeout: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


async def _crash(system, name: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ActorError):
        await system.lookup(name).ask("crash")


async def test_one_for_one_restarts_only_the_failed_child(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with run_system(strategy="one_for_one", max_restarts=5) as system:
        for name in "abc":
            await system.spawn(Counted, name=name)
        await _crash(system, "b")
        await _until(lambda: STARTS["b"] == 2)
        assert await system.lookup("b").ask("n") == 2
        assert STARTS == {"a": 1, "b": 2, "c": 1}
        assert system.stats()["b"].restarts == 1
    assert any("restarting child 'b'" in r.message and "asked to crash" in r.message for r in caplog.records)


async def test_one_for_all_restarts_every_child() -> None:
    async with run_system(strategy="one_for_all", max_restarts=5) as system:
        for name in "abc":
            await system.spawn(Counted, name=name)
        await _crash(system, "b")
        await _until(lambda: all(STARTS[n] == 2 for n in "abc"))
        for name in "abc":
            assert await system.lookup(name).ask("n") == 2


async def test_rest_for_one_restarts_the_failed_child_and_those_after_it() -> None:
    async with run_system(strategy="rest_for_one", max_restarts=5) as system:
        for name in "abcd":
            await system.spawn(Counted, name=name)
        await _crash(system, "b")
        await _until(lambda: STARTS["b"] == 2 and STARTS["c"] == 2 and STARTS["d"] == 2)
        await trio.sleep(0.05)
        assert STARTS == {"a": 1, "b": 2, "c": 2, "d": 2}


async def test_refs_and_queued_messages_survive_a_restart() -> None:
    async with run_system(max_restarts=5) as system:
        ref = await system.spawn(Counted, name="a")
        await ref.tell("crash")
        # queued behind the crash: served by the next incarnation
        assert await ref.ask("n") == 2


async def test_temporary_child_is_not_restarted_and_its_ref_stops() -> None:
    async with run_system() as system:
        ref = await system.spawn(Counted, name="t", restart="temporary")
        await _crash(system, "t")
        await _until(lambda: system.stats()["t"].state == "stopped")
        with pytest.raises(ActorStopped):
            await ref.ask("n")
        assert STARTS["t"] == 1


class Stoppable(Actor):
    async def on_start(self) -> None:
        STARTS[self.name] = STARTS.get(self.name, 0) + 1

    async def handle(self, message: str) -> object:
        if message == "crash":
            raise Crash("boom")
        if message == "exit":
            self.stop()
            return "bye"
        return STARTS[self.name]


async def test_transient_child_restarts_after_a_crash_but_not_after_a_normal_exit() -> None:
    async with run_system(max_restarts=5) as system:
        ref = await system.spawn(Stoppable, name="tr", restart="transient")
        await _crash(system, "tr")
        await _until(lambda: STARTS["tr"] == 2)
        assert await ref.ask("n") == 2
        assert await ref.ask("exit") == "bye"
        await _until(lambda: system.stats()["tr"].state == "stopped")
        await trio.sleep(0.05)
        assert STARTS["tr"] == 2
        with pytest.raises(ActorStopped):
            await ref.ask("n")


async def test_permanent_child_restarts_after_a_normal_exit_too() -> None:
    async with run_system(max_restarts=5) as system:
        ref = await system.spawn(Stoppable, name="p")
        assert await ref.ask("exit") == "bye"
        await _until(lambda: STARTS["p"] == 2)
        assert await ref.ask("n") == 2


async def test_intensity_exceeded_escalates_out_of_the_system() -> None:
    with pytest.raises(BaseException) as info:
        async with open_system("top", max_restarts=2, within=10, grace_period=0.5) as system:
            await system.spawn(Counted, name="flaky")
            for _ in range(3):
                try:
                    await system.lookup("flaky").ask("crash", timeout=1)
                except (ActorError, ActorStopped):
                    pass
                await trio.sleep(0.02)
            await trio.sleep_forever()
    escalation = _find(info.value, SupervisorEscalation)
    assert escalation is not None, info.value
    assert "gave up" in str(escalation) and "'flaky'" in str(escalation)


async def test_nested_supervisor_escalates_to_its_parent_which_restarts_it() -> None:
    async with run_system("root", max_restarts=5, within=10) as system:
        await system.spawn(Counted, name="sibling")
        await system.spawn_supervisor("inner", strategy="one_for_one", max_restarts=1, within=10)
        await system.spawn(Counted, name="leaf", supervisor="inner")
        await _crash(system, "leaf")
        await _until(lambda: STARTS["leaf"] == 2)
        await _crash(system, "leaf")  # second restart within 10 s: inner gives up
        await _until(lambda: STARTS["leaf"] == 3)  # root restarted inner, which started leaf afresh
        assert await system.lookup("leaf").ask("n") == 3
        assert STARTS["sibling"] == 1
        assert system.root.restarts == 1


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None
