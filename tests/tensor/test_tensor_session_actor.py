"""The ZeroMQ tensor session actor against the real libzmq client (pyzmq DEALER)."""

from __future__ import annotations

import functools
import json
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import trio
import zmq

from switchyard.runtime.manifest import load_manifest
from switchyard.services.tensor.client import TensorSessionClient
from switchyard.services.tensor.protocol import decode_reply, encode_request
from switchyard.services.tensor.server import SessionError, TensorSessionServer
from switchyard.services.tensor.zmq_session import TensorCommand, TensorSessionActor, TensorSessionConfig
from switchyard.testing import ipc_endpoint, run_manifest, run_system
from switchyard.transports.zmq_bridges import EndpointLimits

APPS = Path(__file__).resolve().parents[2] / "switchyard" / "apps"


def _owner(array: np.ndarray) -> object:
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


class DemoServer(TensorSessionServer):
    def main_logic(self, command: str, parameters: str) -> bool:
        if command == "sum_diff":
            a, b = self.require_tensors(parameters, 2)
            self.send_tensors(a + b, a - b)
            return True
        if command == "echo":
            (a,) = self.require_tensors(parameters, 1)
            # Zero-copy in: the array views the received ZeroMQ frame.
            self.write_response("", type(_owner(a)).__name__)
            self.send_tensors(a)  # zero-copy out
            return True
        if command == "quiet":
            return True
        if command == "twice":
            self.write_response("", "first")
            self.write_response("", "second")
            return True
        if command == "where":  # which thread main_logic runs in
            self.write_response("", "loop" if threading.current_thread() is threading.main_thread() else "thread")
            return True
        if command == "nap":
            time.sleep(float(parameters))
            return self.main_logic("where", "")
        if command == "answer_then_fail":
            self.write_response("", "partial")
            raise RuntimeError("late failure")
        return super().main_logic(command, parameters)


async def call(fn, *args, **kwargs):
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


@asynccontextmanager
async def actor(**config):
    endpoint = ipc_endpoint()
    async with run_system("tensor-test") as system:
        ref = await system.spawn(
            TensorSessionActor,
            name="tensor",
            config=TensorSessionConfig(endpoint=endpoint, server=f"{__name__}:DemoServer", **config),
        )
        client = TensorSessionClient(endpoint)
        client.start()
        try:
            yield client, ref
        finally:
            client.close()


async def test_hello_matmul_add_over_zeromq():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal((3, 5)).astype(np.float32)
    async with actor() as (client, _):
        assert await call(client.fetch_response, "hello world") == "Hello World"
        assert await call(client.fetch_response, {"cmd": "hello", "params": "你好"}) == "Hello 你好"
        np.testing.assert_allclose(await call(client.calculate, "matmul", a, b), a @ b, rtol=1e-5)
        x = np.arange(24, dtype=np.int8).reshape(2, 3, 4)
        r = await call(client.calculate, "add", x, np.int8(1))
        assert r.dtype == np.int8 and np.array_equal(r, x + 1)
        assert await call(client.wait_until_ready, 1) and client.is_ready()


async def test_two_results_and_zero_copy_both_ways():
    async with actor() as (client, _):
        client.send_tensor(np.full((2, 3), 5, np.float32), "a")
        client.send_tensor(np.full((2, 3), 2, np.float32), "b")
        s, d = await call(client.fetch_tensors, {"cmd": "sum_diff", "params": "a,b"})
        assert np.all(s == 7) and np.all(d == 3)
        big = np.arange(1 << 18, dtype=np.float32)  # 1 MiB
        client.send_tensor(big, "x")
        assert await call(client.fetch_response, {"cmd": "echo", "params": "x"}) == "Frame"
        back = await call(client.wait_for_tensor)
        assert np.array_equal(back, big)
        assert isinstance(_owner(back), zmq.Frame)  # the client side views its frame too


@pytest.mark.parametrize(
    ("send", "error"),
    [
        (lambda c: c.send_request({"cmd": "bogus"}), "error:Failed to process command bogus"),
        (lambda c: c.send_request({"cmd": "matmul", "params": "a,b"}), "'a' not found"),
        (
            lambda c: (
                c.send_tensor(np.ones((2, 3), np.float32), "a"),
                c.send_tensor(np.ones((2, 3), np.float32), "b"),
                c.send_request({"cmd": "matmul", "params": "a,b"}),
            ),
            "matmul:",
        ),
        (lambda c: c.send_request({"cmd": "sum_diff", "params": "a"}), "expected 2 tensor tag(s)"),
    ],
)
async def test_command_errors_come_back_as_error_status(send, error):
    async with actor() as (client, _):
        await call(send, client)
        with pytest.raises(SessionError) as info:
            await call(client.wait_for_response, 5)
        assert str(info.value).startswith("error:") and error in str(info.value)
        assert await call(client.fetch_response, "hello again") == "Hello Again"


async def test_malformed_messages_from_a_raw_peer_get_errors_and_the_actor_serves_on():
    async with actor(limits=EndpointLimits(max_message_size=1 << 20)) as (client, _):
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(client.endpoint)
        try:
            head = json.dumps({"id": 5, "cmd": "add", "params": "a", "tensors": ["a"]}).encode()
            cases = [
                ([b"not json"], None, "header frame"),
                ([head], 5, "frames"),
                ([head, b"TSR?" + bytes(60), b""], 5, "TSR magic"),
                ([head, bytes(64), b""], 5, "TSR magic"),
                (encode_request(6, "add", "a", [("a", np.zeros(1 << 19, np.float32))]), 6, "exceeds the limit"),
            ]
            for frames, req_id, error in cases:
                await call(raw.send_multipart, frames)
                reply = decode_reply(await call(raw.recv_multipart))
                assert reply.id == req_id and reply.status.startswith("error:") and error in reply.status, reply
        finally:
            raw.close()
        assert await call(client.fetch_response, "hello survivor") == "Hello Survivor"


async def test_the_last_message_of_a_request_carries_its_status():
    async with actor() as (client, _):
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(client.endpoint)
        try:

            async def exchange(req_id, cmd, count):
                await call(raw.send_multipart, encode_request(req_id, cmd, ""))
                return [decode_reply(await call(raw.recv_multipart)) for _ in range(count)]

            [only] = await exchange(1, "hello", 1)
            assert (only.params, only.status) == ("Hello ", "ok")
            first, second = await exchange(2, "twice", 2)
            assert (first.params, first.status, second.params, second.status) == ("first", None, "second", "ok")
            partial, done = await exchange(3, "answer_then_fail", 2)
            assert (partial.params, partial.status) == ("partial", None)
            assert done.id == 3 and done.status == "error:late failure"
        finally:
            raw.close()
        await call(client.send_request, {"cmd": "twice"})
        assert await call(client.wait_for_response) == "first"
        assert await call(client.wait_for_response) == "second"
        assert await call(client.fetch_response, {"cmd": "answer_then_fail"}) == "partial"
        with pytest.raises(SessionError, match="late failure"):
            await call(client.wait_for_response, 5)


async def test_quiet_command_and_exit():
    async with actor() as (client, _):
        await call(client.send_request, {"cmd": "quiet"})
        with pytest.raises(SessionError, match="no response is coming"):
            await call(client.wait_for_response, 5)
        await call(client.please_exit, 5)
        assert not client.is_alive()


async def test_two_clients_at_once():
    async with actor(parallel=2) as (first, _):
        second = TensorSessionClient(first.endpoint)
        second.start()
        try:
            a = np.ones((64, 64), np.float32)
            async with trio.open_nursery() as nursery:
                results = {}

                async def run(name, client):
                    for _ in range(10):
                        results[name] = await call(client.calculate, "matmul", a, a)

                nursery.start_soon(run, "first", first)
                nursery.start_soon(run, "second", second)
            assert np.all(results["first"] == 64) and np.all(results["second"] == 64)
        finally:
            second.close()


async def test_a_quick_command_runs_inline_after_its_first_run():
    async with actor(inline_run_us=5000) as (client, _):
        where = [await call(client.fetch_response, "where") for _ in range(4)]
        assert where == ["thread", "loop", "loop", "loop"]
        # inline runs keep the order and the status of several responses
        for _ in range(2):
            await call(client.send_request, {"cmd": "twice"})
            assert await call(client.wait_for_response) == "first"
            assert await call(client.wait_for_response) == "second"


async def test_a_slow_thread_hop_does_not_keep_a_quick_command_off_the_loop():
    # Every worker-thread token is held for 100 ms, so the first run (always in a
    # thread) waits that long for its hop; main_logic itself takes microseconds, and
    # only that run time counts toward the 5 ms bound.
    limiter = trio.to_thread.current_default_thread_limiter()
    holders = [object() for _ in range(int(limiter.total_tokens))]
    async with actor(inline_run_us=5000) as (client, _):
        for holder in holders:
            limiter.acquire_on_behalf_of_nowait(holder)
        try:
            client.send_request("where")  # a non-blocking send, from this (the Trio) thread
            await trio.sleep(0.1)
        finally:
            for holder in holders:
                limiter.release_on_behalf_of(holder)
        assert await call(client.wait_for_response) == "thread"
        assert [await call(client.fetch_response, "where") for _ in range(3)] == ["loop"] * 3


async def test_inline_off_always_uses_a_thread():
    async with actor(inline_run_us=0) as (client, _):
        assert [await call(client.fetch_response, "where") for _ in range(3)] == ["thread"] * 3


async def test_a_slow_command_stays_in_threads_and_one_slow_inline_run_bars_it():
    async with actor(inline_run_us=5000) as (client, _):

        async def nap(seconds: float) -> str:
            return await call(client.fetch_response, {"cmd": "nap", "params": str(seconds)})

        assert [await nap(0.02) for _ in range(3)] == ["thread"] * 3  # 20 ms: over the 5 ms bound
        # quick runs bring the running average under the bound: inline again
        assert "loop" in [await nap(0) for _ in range(20)]
        assert await nap(0.06) == "loop"  # 60 ms inline: over 10 x the bound, so barred
        assert [await nap(0) for _ in range(3)] == ["thread"] * 3


async def test_in_process_ask():
    async with actor() as (_, ref):
        reply = await ref.ask(TensorCommand("add", "a,b", {"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)}))
        assert reply.ok and reply.responses[0].params == "r"
        assert np.all(reply.responses[0].tensors[0][1] == 2)
        reply = await ref.ask(TensorCommand("bogus"))
        assert reply.status == "error:Failed to process command bogus"


def test_manifests_declare_the_actor():
    tensor_app = load_manifest(APPS / "tensor.toml")
    kinds = {a.name: a.actor_class for a in tensor_app.actors}
    assert kinds["tensor_session"] is TensorSessionActor and kinds["tensor_session_tcp"] is TensorSessionActor
    default = load_manifest(APPS / "default.toml")
    assert any(a.actor_class is TensorSessionActor for a in default.actors)


async def test_tensor_app_runs_from_its_manifest(tmp_path):
    text = (APPS / "tensor.toml").read_text()
    endpoint = ipc_endpoint()
    text = text.replace("ipc://run/tensor_session.sock", endpoint)
    from switchyard.testing import free_tcp_endpoint

    text = text.replace("tcp://127.0.0.1:5610", free_tcp_endpoint())
    async with run_manifest(text):
        with TensorSessionClient(endpoint) as client:
            client.start()
            assert await call(client.fetch_response, "hello manifest") == "Hello Manifest"
