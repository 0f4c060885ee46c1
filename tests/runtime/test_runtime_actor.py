"""Actors, refs and the system: backpressure, ask, stream, lifecycle, registry, stats."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from switchyard.runtime import (
    Actor,
    ActorError,
    ActorNotFound,
    ActorStopped,
    AskTimeout,
    ConfigError,
    MailboxFull,
    open_system,
)
from switchyard.testing import run_system

RELEASE: dict[str, trio.Semaphore] = {}


class Gate(Actor):
    """Blocks on "wait" until the test releases it (lets tests fill the mailbox)."""

    mailbox_capacity = 2

    async def handle(self, message: object) -> object:
        if message == "wait":
            await RELEASE[self.name].acquire()
        return message


class Calc(Actor):
    async def handle(self, message: tuple[str, float]) -> float:
        op, value = message
        if op == "div":
            return 1 / value
        if op == "sleep":
            await trio.sleep(value)
            return value
        raise ValueError(f"unknown op {op}")

    async def handle_stream(self, count: int):
        for i in range(count):
            yield i


async def test_tell_blocks_when_mailbox_full_and_tell_nowait_raises() -> None:
    RELEASE["gate"] = trio.Semaphore(0)
    async with run_system() as system:
        ref = await system.spawn(Gate, name="gate")
        await ref.tell("wait")  # taken into hand: the actor is now busy
        await trio.testing.wait_all_tasks_blocked()
        ref.tell_nowait(1)
        ref.tell_nowait(2)  # capacity 2: now full
        with pytest.raises(MailboxFull, match="'gate' is full"):
            ref.tell_nowait(3)
        sent = trio.Event()

        async def sender() -> None:
            await ref.tell(3)
            sent.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            assert not sent.is_set(), "tell must wait while the mailbox is full"
            assert system.stats()["gate"].mailbox_depth == 2
            RELEASE["gate"].release()
        assert sent.is_set()
        assert await ref.ask("last") == "last"
        assert system.stats()["gate"].handled == 5


async def test_ask_returns_value_errors_come_back_and_actor_goes_on() -> None:
    async with run_system() as system:
        ref = await system.spawn(Calc, name="calc")
        assert await ref.ask(("div", 4)) == 0.25
        with pytest.raises(ActorError) as info:
            await ref.ask(("div", 0))
        assert isinstance(info.value.exception, ZeroDivisionError)
        assert info.value.type_name == "ZeroDivisionError"
        assert await ref.ask(("div", 2)) == 0.5
        stats = system.stats()["calc"]
        assert stats.errors == 1 and stats.handled == 3 and stats.restarts == 0
        assert stats.last_error is not None and "ZeroDivisionError" in stats.last_error


async def test_ask_timeout() -> None:
    async with run_system() as system:
        ref = await system.spawn(Calc, name="calc")
        with trio.fail_after(2):
            with pytest.raises(AskTimeout, match="within 0.05 s"):
                await ref.ask(("sleep", 0.5), timeout=0.05)
        assert await ref.ask(("div", 1), timeout=2) == 1.0


async def test_stream_yields_all_replies() -> None:
    async with run_system() as system:
        ref = await system.spawn(Calc, name="calc")
        async with ref.stream(5) as replies:
            assert [item async for item in replies] == [0, 1, 2, 3, 4]


async def test_leaving_a_stream_early_cancels_the_producer() -> None:
    produced: list[int] = []
    finished = trio.Event()

    class Endless(Actor):
        async def handle_stream(self, message: object):
            try:
                i = 0
                while True:
                    produced.append(i)
                    yield i
                    i += 1
                    await trio.sleep(0)
            finally:
                finished.set()

        async def handle(self, message: object) -> object:
            return "still here"

    async with run_system() as system:
        ref = await system.spawn(Endless, name="endless")
        async with ref.stream(None) as replies:
            async for item in replies:
                if item == 3:
                    break
        with trio.fail_after(2):
            await finished.wait()
        assert len(produced) <= 5
        assert await ref.ask("ping") == "still here"


async def test_stream_cancels_a_producer_blocked_on_something_else() -> None:
    cancelled = trio.Event()

    class Slow(Actor):
        async def handle_stream(self, message: object):
            yield "first"
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                cancelled.set()
                raise
            yield "never"

    async with run_system() as system:
        ref = await system.spawn(Slow, name="slow")
        async with ref.stream(None) as replies:
            assert await replies.__anext__() == "first"
            await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(2):
            await cancelled.wait()


async def test_stream_error_reaches_consumer() -> None:
    class Broken(Actor):
        async def handle_stream(self, message: object):
            yield 1
            raise RuntimeError("producer broke")

    async with run_system() as system:
        ref = await system.spawn(Broken, name="broken")
        got = []
        with pytest.raises(ActorError, match="producer broke"):
            async with ref.stream(None) as replies:
                async for item in replies:
                    got.append(item)
        assert got == [1]


async def test_spawn_returns_only_when_ready_and_hooks_run() -> None:
    events: list[str] = []

    class Slow(Actor):
        async def on_start(self) -> None:
            await trio.sleep(0.05)
            events.append("started")

        async def on_stop(self) -> None:
            events.append("stopped")

        async def handle(self, message: object) -> object:
            return message

    async with run_system() as system:
        await system.spawn(Slow, name="slow")
        assert events == ["started"]
    assert events == ["started", "stopped"]


async def test_spawn_raises_when_on_start_fails_and_nothing_is_registered() -> None:
    class Fails(Actor):
        async def on_start(self) -> None:
            raise OSError("address in use")

    async with run_system() as system:
        with pytest.raises(OSError, match="address in use"):
            await system.spawn(Fails, name="fails")
        with pytest.raises(ActorNotFound):
            system.lookup("fails")


async def test_registry_lookup_from_another_actor() -> None:
    class Caller(Actor):
        async def handle(self, message: object) -> object:
            return await self.system.lookup("calc").ask(("div", message))

    async with run_system() as system:
        await system.spawn(Calc, name="calc")
        caller = await system.spawn(Caller, name="caller")
        assert await caller.ask(4) == 0.25
        with pytest.raises(ActorNotFound, match="known: calc, caller"):
            system.lookup("nobody")
        with pytest.raises(ConfigError, match="already exists"):
            await system.spawn(Calc, name="calc")


async def test_config_from_dict_is_validated() -> None:
    @attrs.frozen
    class Conf:
        port: int = 1

    class Configured(Actor):
        Config = Conf

        async def handle(self, message: object) -> object:
            return self.config.port

    async with run_system() as system:
        ref = await system.spawn(Configured, name="c", config={"port": 7})
        assert await ref.ask(None) == 7
        with pytest.raises(ConfigError, match="key 'port': expected int, got str"):
            await system.spawn(Configured, name="d", config={"port": "7"})


async def test_graceful_shutdown_drains_mailbox_and_refuses_new_messages() -> None:
    handled: list[int] = []

    class Worker(Actor):
        async def handle(self, message: int) -> None:
            await trio.sleep(0.01)
            handled.append(message)

    async with open_system("t", grace_period=5) as system:
        ref = await system.spawn(Worker, name="w")
        for i in range(5):
            await ref.tell(i)
    assert handled == [0, 1, 2, 3, 4]
    with pytest.raises(ActorStopped):
        await ref.tell(99)


async def test_grace_period_bounds_shutdown() -> None:
    class Stuck(Actor):
        async def handle(self, message: object) -> None:
            await trio.sleep_forever()

    with trio.fail_after(3):
        async with open_system("t", grace_period=0.2) as system:
            ref = await system.spawn(Stuck, name="stuck")
            await ref.tell(1)
            await trio.testing.wait_all_tasks_blocked()


async def test_actor_logger_is_named_after_it() -> None:
    class Named(Actor):
        async def handle(self, message: object) -> str:
            return self.log.name

    async with run_system() as system:
        ref = await system.spawn(Named, name="rime")
        assert await ref.ask(None) == "switchyard.actor.rime"
