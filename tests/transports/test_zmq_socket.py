"""The Trio-native ZeroMQ adapter: every socket type, tcp and ipc, many tasks per socket."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
import zmq
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from switchyard.testing import ipc_endpoint
from switchyard.transports.zmq import ReceiveStopped, SocketOptions, open_socket


def _endpoints(tmp_path: Path) -> list[str]:
    return ["tcp://127.0.0.1:*", ipc_endpoint(tmp_path)]


@pytest.fixture(params=["tcp", "ipc"])
def bind_endpoint(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "tcp://127.0.0.1:*" if request.param == "tcp" else ipc_endpoint(tmp_path)


async def test_req_rep(bind_endpoint: str) -> None:
    async with open_socket(zmq.REP, bind=bind_endpoint) as rep:
        async with open_socket("REQ", connect=rep.endpoints[0]) as req:

            async def serve() -> None:
                for _ in range(3):
                    await rep.send(b"re:" + await rep.recv())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                for i in range(3):
                    await req.send(b"%d" % i)
                    assert await req.recv() == b"re:%d" % i


async def test_dealer_router_multipart_zero_copy(bind_endpoint: str) -> None:
    async with open_socket(zmq.ROUTER, bind=bind_endpoint) as router:
        async with open_socket(
            zmq.DEALER, connect=router.endpoints[0], options=SocketOptions(identity=b"client-1")
        ) as dealer:
            payload = bytearray(b"x" * 100_000)
            await dealer.send_multipart([b"head", memoryview(payload)])
            frames = await router.recv_multipart(copy=False)
            assert frames[0].bytes == b"client-1"
            assert frames[1].bytes == b"head" and len(frames[2].buffer) == 100_000
            await router.send_multipart([b"client-1", b"back"])
            assert await dealer.recv() == b"back"


async def test_pub_sub_and_push_pull(bind_endpoint: str, tmp_path: Path) -> None:
    async with open_socket(zmq.PUB, bind=bind_endpoint) as pub:
        async with open_socket(
            zmq.SUB, connect=pub.endpoints[0], options=SocketOptions(subscribe=(b"ai_events",))
        ) as sub:
            with trio.fail_after(5):
                while True:  # slow joiner: publish until the subscription is through
                    await pub.send_multipart([b"ai_events", b"hello"])
                    await pub.send_multipart([b"other", b"skip"])
                    with trio.move_on_after(0.05):
                        assert await sub.recv_multipart() == [b"ai_events", b"hello"]
                        break
    push_bind = "tcp://127.0.0.1:*" if bind_endpoint.startswith("tcp") else ipc_endpoint(tmp_path)
    async with open_socket(zmq.PULL, bind=push_bind) as pull:
        async with open_socket(zmq.PUSH, connect=pull.endpoints[0]) as push:
            for i in range(100):
                await push.send(b"%d" % i)
            assert [await pull.recv() for _ in range(100)] == [b"%d" % i for i in range(100)]


async def test_send_waits_at_hwm_and_resumes() -> None:
    async with open_socket(zmq.PULL, bind="tcp://127.0.0.1:*", options=SocketOptions(rcvhwm=1)) as pull:
        async with open_socket(zmq.PUSH, connect=pull.endpoints[0], options=SocketOptions(sndhwm=1)) as push:
            sent = 0

            async def flood() -> None:
                nonlocal sent
                for _i in range(2000):
                    await push.send(b"m" * 1000)
                    sent += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                with trio.fail_after(10):
                    for _ in range(2000):
                        await pull.recv()
            assert sent == 2000


async def test_close_wakes_waiters_with_closed_resource_error() -> None:
    async with open_socket(zmq.PULL, bind="tcp://127.0.0.1:*") as pull:

        async def waiter() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await pull.recv()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            await pull.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await pull.send(b"x")


async def test_receive_is_cancellable() -> None:
    async with open_socket(zmq.PULL, bind="tcp://127.0.0.1:*") as pull:
        with trio.move_on_after(0.05) as scope:
            await pull.recv()
        assert scope.cancelled_caught


async def test_many_senders_and_receivers_on_one_socket_each_direction() -> None:
    """Two DEALERs echo through a ROUTER; many tasks send and receive on each socket."""
    senders, per_sender = 8, 200
    async with open_socket(zmq.ROUTER, bind="tcp://127.0.0.1:*") as router:
        async with open_socket(zmq.DEALER, connect=router.endpoints[0]) as dealer:

            async def echo() -> None:
                while True:
                    frames = await router.recv_multipart()
                    await router.send_multipart(frames)

            received: list[bytes] = []

            async def send_some(k: int) -> None:
                for i in range(per_sender):
                    await dealer.send_multipart([b"%d" % k, b"%d" % i])

            async def receive_some(count: int) -> None:
                for _ in range(count):
                    k, i = await dealer.recv_multipart()
                    received.append(k + b":" + i)

            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(echo)
                    async with trio.open_nursery() as workers:
                        for k in range(senders):
                            workers.start_soon(send_some, k)
                        for _ in range(4):
                            workers.start_soon(receive_some, senders * per_sender // 4)
                    nursery.cancel_scope.cancel()
            expected = sorted(b"%d:%d" % (k, i) for k in range(senders) for i in range(per_sender))
            assert sorted(received) == expected


class OneSocketManyTasks(RuleBasedStateMachine):
    """Drive one DEALER socket from many Trio tasks at once; no hang, loss or interleaving.

    Each rule runs a batch of concurrent tasks: some send multipart messages (tagged
    with a sequence number and a variable number of frames), some receive the echoes.
    The invariant: everything sent comes back whole (frame count and content intact).
    """

    def __init__(self) -> None:
        super().__init__()
        self.sent: dict[bytes, list[bytes]] = {}
        self.received: dict[bytes, list[bytes]] = {}
        self.counter = 0

    @initialize()
    def fresh(self) -> None:
        self.sent.clear()
        self.received.clear()

    @rule(
        batch=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=12),
        receivers=st.integers(min_value=1, max_value=6),
        payload=st.binary(max_size=64),
    )
    def concurrent_round(self, batch: list[int], receivers: int, payload: bytes) -> None:
        messages = []
        for extra in batch:
            self.counter += 1
            tag = b"m%d" % self.counter
            messages.append([tag, *([payload] * extra)])
        trio.run(self._round, messages, receivers)

    async def _round(self, messages: list[list[bytes]], receivers: int) -> None:
        async with open_socket(zmq.ROUTER, bind="tcp://127.0.0.1:*") as router:
            async with open_socket(zmq.DEALER, connect=router.endpoints[0]) as dealer:
                share, rest = divmod(len(messages), receivers)
                counts = [share + (1 if r < rest else 0) for r in range(receivers)]

                async def echo() -> None:
                    while True:
                        frames = await router.recv_multipart()
                        await router.send_multipart(frames)

                async def send(message: list[bytes]) -> None:
                    await dealer.send_multipart(message)
                    self.sent[message[0]] = message

                async def receive(count: int) -> None:
                    for _ in range(count):
                        frames = await dealer.recv_multipart()
                        self.received[frames[0]] = frames

                with trio.fail_after(10):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(echo)
                        async with trio.open_nursery() as tasks:
                            for count in counts:
                                tasks.start_soon(receive, count)
                            for message in messages:
                                tasks.start_soon(send, message)
                        nursery.cancel_scope.cancel()

    @invariant()
    def nothing_lost_or_interleaved(self) -> None:
        assert self.received == self.sent


OneSocketManyTasks.TestCase.settings = settings(
    max_examples=15, stateful_step_count=4, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestOneSocketManyTasks = OneSocketManyTasks.TestCase


async def test_an_ipc_socket_file_is_removed_on_close_and_its_directory_is_private(tmp_path: Path) -> None:
    path = tmp_path / "run" / "deep" / "s.sock"
    async with open_socket(zmq.REP, bind=f"ipc://{path}"):
        assert path.exists()
        assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert not path.exists()


async def test_closing_leaves_a_newer_servers_socket_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    async with open_socket(zmq.REP, bind=f"ipc://{path}"):
        path.unlink()  # another server took the path over
        async with open_socket(zmq.REP, bind=f"ipc://{path}"):
            pass
        path.touch()  # stands for the newer server's file
    assert path.exists()


async def test_stop_receiving_wakes_every_receiver_and_sending_goes_on() -> None:
    """A waiting receiver, one queued behind it and any later one get ReceiveStopped; sends still work."""
    async with open_socket(zmq.ROUTER, bind="tcp://127.0.0.1:*") as router:
        async with open_socket(zmq.DEALER, connect=router.endpoints[0]) as dealer:
            await dealer.send(b"hello")
            identity, body = await router.recv_multipart()
            assert body == b"hello"
            stopped: list[str] = []

            async def receiver(name: str) -> None:
                with pytest.raises(ReceiveStopped):
                    await router.recv_multipart()
                stopped.append(name)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receiver, "first")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(receiver, "second")
                await trio.testing.wait_all_tasks_blocked()
                assert stopped == []
                router.stop_receiving()
            assert sorted(stopped) == ["first", "second"]
            with pytest.raises(ReceiveStopped):
                await router.recv_multipart()
            with pytest.raises(trio.WouldBlock):
                router.recv_multipart_nowait()
            await router.send_multipart([identity, b"still answers"])
            with trio.fail_after(5):
                assert await dealer.recv() == b"still answers"


async def test_a_receiver_waiting_on_the_fd_is_woken_when_another_task_reads_events() -> None:
    """The fd waiter (a receiver) must not sleep through a message whose edge a sender's op consumed."""
    async with open_socket(zmq.DEALER, bind="tcp://127.0.0.1:*") as a:
        async with open_socket(zmq.DEALER, connect=a.endpoints[0]) as b:
            got: list[bytes] = []

            async def receive() -> None:
                for _ in range(50):
                    got.append(await a.recv())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                for i in range(50):
                    await b.send(b"%d" % i)
                    await trio.sleep(0)
                    await a.send(b"ping")  # an op on a while its receiver waits on the fd
                with trio.fail_after(5):
                    while len(got) < 50:
                        await trio.sleep(0.001)
            assert got == [b"%d" % i for i in range(50)]
