"""The inference service through real ZeroMQ peers (pyzmq/libzmq REQ, DEALER, SUB)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
import trio
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from switchyard import open_system
from switchyard.apps.models import DIGITS_MODEL, digits_heldout
from switchyard.services.inference.binary import encode_binary_request, parse_binary_reply
from switchyard.services.inference.models import ModelConfig, digits_model
from switchyard.services.inference.protocol import TaskReply, parse_event, parse_reply
from switchyard.services.inference.service import InferenceActor, InferenceConfig
from switchyard.testing import free_tcp_endpoint
from switchyard.testing.inference import bundled_digit_predictions, digit_task, req_roundtrips

HELD = digits_heldout()
OUTSIDE = "outside the models directory"


@attrs.frozen
class Service:
    endpoint: str
    events: str
    ref: Any
    actor_status: Any


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    async with _service(limits=attrs.evolve(InferenceConfig().limits, max_message_size=64 << 10)) as svc:
        yield svc


def _service(**config: Any):  # type: ignore[no-untyped-def]
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def run() -> AsyncIterator[Service]:
        endpoint, events = free_tcp_endpoint(), free_tcp_endpoint()
        async with open_system("inference-test") as system:
            config.setdefault("events_endpoint", events)
            ref = await system.spawn(
                InferenceActor, name="inference", config=InferenceConfig(endpoint=endpoint, **config)
            )

            async def status() -> dict[str, Any]:
                return await ref.ask("status", timeout=5)

            yield Service(endpoint, events, ref, status)

    return run()


async def roundtrips(endpoint: str, requests: list[Any]) -> list[list[bytes]]:
    return await trio.to_thread.run_sync(req_roundtrips, endpoint, requests)


async def ask_json(endpoint: str, body: bytes) -> TaskReply:
    [[frame]] = await roundtrips(endpoint, [body])
    return parse_reply(frame)


def pixels(i: int) -> bytes:
    return HELD.pixels[i].tobytes()


# --- the two wire shapes -------------------------------------------------------------


async def test_go_client_shape_exactly(service: Service) -> None:
    # What Go's json.Marshal(AITask{...}) writes: field order, padded std base64, sorted params.
    import base64

    b64 = base64.b64encode(pixels(0)).decode()
    body = (
        '{"task_id":"9b2e6c1a-0f4d-4e55-8a77-3c2d1e0f9a88","task_type":"digit_recognition",'
        f'"model_path":"/models/digits_mlp.onnx","input_data":"{b64}",'
        '"params":{"meeting_id":"456","user_id":"789"}}'
    ).encode()
    [[raw]] = await roundtrips(service.endpoint, [body])
    obj = json.loads(raw)
    assert list(obj) == ["task_id", "status", "result", "error", "latency"]
    assert obj["task_id"] == "9b2e6c1a-0f4d-4e55-8a77-3c2d1e0f9a88"
    assert obj["status"] == "success" and obj["error"] == ""
    assert type(obj["latency"]) is int and obj["latency"] >= 0
    assert obj["result"]["label"] == str(HELD.labels[0])
    assert 0.0 < obj["result"]["confidence"] <= 1.0


async def test_cpp_byte_array_shape(service: Service) -> None:
    body = json.dumps(
        {
            "task_id": "cpp-1",
            "task_type": "digit_recognition",
            "model_path": "",
            "input_data": list(pixels(1)),
            "params": {},
        }
    ).encode()
    reply = await ask_json(service.endpoint, body)
    assert reply.ok and reply.task_id == "cpp-1" and reply.result["label"] == str(HELD.labels[1])


async def test_heldout_accuracy_through_the_service(service: Service) -> None:
    n = len(HELD.labels)
    bodies = [digit_task(f"h{i}", pixels(i), byte_array=bool(i % 2)) for i in range(n)]
    # four REQ clients at once, each in lockstep like the Go client
    chunks = [list(range(k, n, 4)) for k in range(4)]
    replies: dict[int, TaskReply] = {}

    async def client(indices: list[int]) -> None:
        for i, [frame] in zip(indices, await roundtrips(service.endpoint, [bodies[i] for i in indices]), strict=False):
            replies[i] = parse_reply(frame)

    async with trio.open_nursery() as nursery:
        for chunk in chunks:
            nursery.start_soon(client, chunk)
    assert all(replies[i].ok and replies[i].task_id == f"h{i}" for i in range(n))
    accuracy = sum(replies[i].result["label"] == str(HELD.labels[i]) for i in range(n)) / n
    assert accuracy >= 0.95, accuracy
    assert accuracy == pytest.approx(HELD.onnx_accuracy)  # the service adds no decoding error


async def test_scale_param_for_0_255_pixels(service: Service) -> None:
    grey = np.round(HELD.pixels[:20].astype(np.float64) * 255 / 16).astype(np.uint8)
    bodies = [digit_task(f"g{i}", grey[i].tobytes(), params={"scale": str(16 / 255)}) for i in range(20)]
    replies = [parse_reply(f) for [f] in await roundtrips(service.endpoint, bodies)]
    assert all(r.ok for r in replies)
    plain_bodies = [digit_task(f"p{i}", pixels(i)) for i in range(20)]
    plain = [parse_reply(f) for [f] in await roundtrips(service.endpoint, plain_bodies)]
    assert [r.result["label"] for r in replies] == [r.result["label"] for r in plain]


# --- bad input: a clear error each, and the service keeps serving ----------------------


@pytest.mark.parametrize(
    "body, task_id, needle",
    [
        (digit_task("trav1", bytes(64), model_path="/models/../../../etc/passwd"), "trav1", OUTSIDE),
        (digit_task("trav2", bytes(64), model_path="../inference.py"), "trav2", OUTSIDE),
        (digit_task("trav3", bytes(64), model_path="/etc/passwd"), "trav3", OUTSIDE),
        (digit_task("trav4", bytes(64), model_path="/models/%2e%2e/x\x00.onnx"), "trav4", OUTSIDE),
        (digit_task("unk1", bytes(64), model_path="/models/whisper_base.onnx"), "unk1", "does not exist"),
        (digit_task("unk2", bytes(64), task_type="speech_recognition"), "unk2", "known task types: digit_recognition"),
        (
            digit_task("mis", bytes(64), task_type="emotion_detection", model_path="digits"),
            "mis",
            "serves task types digit_recognition",
        ),
        (digit_task("size", bytes(63)), "size", "63 bytes; expected 64 bytes"),
        (digit_task("shape", bytes(64), params={"shape": "8,8"}), "shape", "does not fit model 'digits' input [N, 64]"),
        (b"\xff\xfe\x00garbage\x80", "", "not valid JSON"),
        (b'{"task_id":"b64","task_type":"digit_recognition","input_data":"@@@@"}', "b64", "base64"),
        (b"[1,2,3]", "", "JSON object"),
        (b'{"task_id":"nt","input_data":""}', "nt", "task_type is missing"),
    ],
)
async def test_bad_requests_get_clear_errors(service: Service, body: bytes, task_id: str, needle: str) -> None:
    reply = await ask_json(service.endpoint, body)
    assert reply.status == "error" and needle in reply.error and reply.task_id == task_id
    ok = await ask_json(service.endpoint, digit_task("after", pixels(2)))
    assert ok.ok and ok.result["label"] == str(HELD.labels[2])


async def test_oversized_message_gets_an_error_reply(service: Service) -> None:
    big = digit_task("huge", bytes(100_000))  # ~133 KB of JSON > 64 KiB limit
    reply = await ask_json(service.endpoint, big)
    assert reply.status == "error" and "too large" in reply.error and reply.task_id == "huge"
    status = await service.actor_status()
    assert status["server"]["too_large"] == 1
    assert (await ask_json(service.endpoint, digit_task("after", pixels(3)))).ok


async def test_garbage_multipart_shapes_get_replies(service: Service) -> None:
    replies = await roundtrips(service.endpoint, [[b"a", b"b", b"c"], [b"\x01", b"\x02"]])
    first = parse_reply(replies[0][0])
    assert first.status == "error" and "1 frame (JSON) or 2 (binary)" in first.error
    second = parse_binary_reply(replies[1][0])
    assert second.status == "error" and "msgpack" in second.error


async def test_models_dir_errors_not_onnx_and_broken_declared_model(tmp_path: Path) -> None:
    shutil.copy(DIGITS_MODEL, tmp_path / "digits_mlp.onnx")
    (tmp_path / "notes.onnx").write_text("just text\n")
    (tmp_path / "readme.txt").write_text("hello\n")
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf")
    outside = tmp_path.parent / f"outside-{os.getpid()}.onnx"
    shutil.copy(DIGITS_MODEL, outside)
    (tmp_path / "link.onnx").symlink_to(outside)
    broken = ModelConfig(name="broken", path="broken.onnx", task_types=["emotion_detection"], preload=False)
    async with _service(models_dir=str(tmp_path), models=[digits_model(), broken]) as svc:
        cases = [
            (digit_task("n1", bytes(64), model_path="/models/notes.onnx"), "is not an ONNX model"),
            (digit_task("n2", bytes(64), model_path="readme.txt"), "is not an ONNX model"),
            (digit_task("n3", bytes(64), model_path="/models/link.onnx"), OUTSIDE),
            (digit_task("n4", bytes(64), task_type="emotion_detection"), "not a loadable ONNX model"),
            (digit_task("n5", bytes(64), model_path=str(tmp_path / "digits_mlp.onnx")), None),
        ]
        for body, needle in cases:
            reply = await ask_json(svc.endpoint, body)
            if needle is None:
                assert reply.ok
            else:
                assert reply.status == "error" and needle in reply.error, reply
    outside.unlink()


async def test_lazy_model_loads_once_under_concurrency() -> None:
    lazy = attrs.evolve(digits_model(), preload=False)
    async with _service(models=[lazy]) as svc:
        assert (await svc.actor_status())["models"] == {"digits": False}
        results: list[TaskReply] = []

        async def one(i: int) -> None:
            results.append(await ask_json(svc.endpoint, digit_task(f"l{i}", pixels(i))))

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(one, i)
        assert len(results) == 8 and all(r.ok for r in results)
        assert (await svc.actor_status())["models"] == {"digits": True}


# --- binary fast path ----------------------------------------------------------------


async def test_binary_fast_path_batch(service: Service) -> None:
    tensor = HELD.pixels[:32].astype(np.float32)
    frames = encode_binary_request("bin-1", tensor, task_type="digit_recognition")
    [[raw]] = await roundtrips(service.endpoint, [frames])
    reply = parse_binary_reply(raw)
    assert reply.ok and reply.task_id == "bin-1"
    assert [r["label"] for r in reply.result["results"]] == EXPECTED[:32]
    one = encode_binary_request("bin-2", HELD.pixels[:1], model="digits")  # uint8, by model name
    [[raw]] = await roundtrips(service.endpoint, [one])
    assert parse_binary_reply(raw).result["results"][0]["label"] == EXPECTED[0]


# --- batching: each caller gets its own result -----------------------------------------


EXPECTED = bundled_digit_predictions()

# (kind, start index, rows): kind "json" (1 row), "bin" (rows rows), "bad" (wrong size)
request_mix = st.lists(
    st.tuples(st.sampled_from(["json", "json", "bin", "bad"]), st.integers(0, len(EXPECTED) - 40), st.integers(1, 40)),
    min_size=2,
    max_size=40,
)


@pytest.fixture
async def batching_service() -> AsyncIterator[Service]:
    async with _service(max_batch_size=48, max_delay_ms=3.0) as svc:
        yield svc


@settings(max_examples=12, deadline=None)
@given(mix=request_mix)
async def test_batching_returns_each_caller_its_own_result(mix: list) -> None:
    # pytest-trio runs each Hypothesis example in its own trio.run, so the service is
    # started per example rather than by a fixture.
    async with _service(max_batch_size=32, max_delay_ms=3.0) as svc:
        replies = await trio.to_thread.run_sync(_run_dealers, svc.endpoint, mix)
        missing = [k for k, v in replies.items() if v is None]
        assert not missing, (missing, await svc.actor_status())
    _check_mix(mix, replies)


def _run_dealers(endpoint: str, mix: list) -> dict[str, Any]:
    # one DEALER per request, all sent before any reply is read, so they batch
    ctx = zmq.Context.instance()
    socks = []
    try:
        for _ in mix:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 10_000)
            sock.connect(endpoint)
            socks.append(sock)
        for n, (kind, start, rows) in enumerate(mix):
            if kind == "json":
                frames = [digit_task(f"m{n}", pixels(start))]
            elif kind == "bin":
                frames = encode_binary_request(f"m{n}", HELD.pixels[start : start + rows], model="digits")
            else:
                frames = [digit_task(f"m{n}", bytes(rows % 63 + 1))]
            socks[n].send_multipart([b"", *frames], copy=False)
        out = {}
        for n, sock in enumerate(socks):
            try:
                out[f"m{n}"] = sock.recv_multipart()
            except zmq.Again:
                out[f"m{n}"] = None
        return out
    finally:
        for sock in socks:
            sock.close()


def _check_mix(mix: list, replies: dict[str, Any]) -> None:
    for n, (kind, start, rows) in enumerate(mix):
        empty, raw = replies[f"m{n}"]
        assert empty == b""
        if kind == "bin":
            reply = parse_binary_reply(raw)
            assert reply.task_id == f"m{n}" and reply.ok
            assert [r["label"] for r in reply.result["results"]] == EXPECTED[start : start + rows]
        else:
            reply = parse_reply(raw)
            assert reply.task_id == f"m{n}"
            if kind == "json":
                assert reply.ok and reply.result["label"] == EXPECTED[start]
            else:
                assert reply.status == "error" and "expected 64 bytes" in reply.error


async def test_batches_really_form(batching_service: Service) -> None:
    bodies = [[b"", digit_task(f"c{i}", pixels(i))] for i in range(64)]

    def burst() -> int:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        sock.connect(batching_service.endpoint)
        try:
            for frames in bodies:
                sock.send_multipart(frames)
            return sum(parse_reply(sock.recv_multipart()[1]).ok for _ in bodies)
        finally:
            sock.close()

    assert await trio.to_thread.run_sync(burst) == 64
    stats = (await batching_service.actor_status())["batches"]["digits[64]"]
    assert stats["rows"] == 64 and stats["batches"] < 64


async def test_batching_off_runs_one_request_per_batch() -> None:
    async with _service(max_batch_size=1) as svc:
        bodies = [digit_task(f"o{i}", pixels(i)) for i in range(10)]
        assert all(parse_reply(f).ok for [f] in await roundtrips(svc.endpoint, bodies))
        stats = (await svc.actor_status())["batches"]["digits[64]"]
        assert (stats["batches"], stats["rows"]) == (10, 10)


async def test_a_tiny_model_runs_inline_after_its_first_measured_run() -> None:
    # the digits MLP runs in microseconds: after one thread run measured it, the
    # lockstep tasks run in the event loop (no thread hop), with the same answers
    async with _service(max_batch_size=1, inline_run_us=5000) as svc:
        bodies = [digit_task(f"i{i}", pixels(i)) for i in range(8)]
        replies = [parse_reply(f) for [f] in await roundtrips(svc.endpoint, bodies)]
        assert all(r.ok for r in replies)
        stats = (await svc.actor_status())["batches"]["digits[64]"]
        assert stats["batches"] == 8 and stats["inline_batches"] == 7


@pytest.mark.parametrize("inline_run_us", [0.0, 0.001])
async def test_inline_runs_off_or_a_model_over_the_bound_always_uses_a_thread(inline_run_us: float) -> None:
    async with _service(max_batch_size=1, inline_run_us=inline_run_us) as svc:
        bodies = [digit_task(f"t{i}", pixels(i)) for i in range(5)]
        assert all(parse_reply(f).ok for [f] in await roundtrips(svc.endpoint, bodies))
        stats = (await svc.actor_status())["batches"]["digits[64]"]
        assert stats["batches"] == 5 and stats["inline_batches"] == 0


async def test_inline_and_thread_runs_give_the_same_results() -> None:
    bodies = [digit_task(f"s{i}", pixels(i)) for i in range(6)]
    answers = []
    for inline_run_us in (0.0, 5000.0):
        async with _service(max_batch_size=1, inline_run_us=inline_run_us) as svc:
            answers.append([parse_reply(f).result for [f] in await roundtrips(svc.endpoint, bodies)])
    assert answers[0] == answers[1]


# --- events --------------------------------------------------------------------------


async def test_events_arrive_on_a_sub_socket(service: Service) -> None:
    def subscribe_and_collect() -> list[Any]:
        ctx = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"ai_events")
        sub.setsockopt(zmq.RCVTIMEO, 200)
        sub.connect(service.events)
        try:
            # a SUB sees only what is published after it joined: poke until one arrives
            for attempt in range(50):
                req_roundtrips(service.endpoint, [digit_task(f"warm{attempt}", pixels(0))])
                try:
                    sub.recv_multipart()
                    break
                except zmq.Again:
                    continue
            else:
                raise AssertionError("no event ever arrived")
            while True:  # drain warm-up events
                try:
                    sub.recv_multipart()
                except zmq.Again:
                    break
            req_roundtrips(
                service.endpoint,
                [
                    digit_task("ev-ok", pixels(4), params={"meeting_id": "456", "user_id": "789", "lang": "zh"}),
                    digit_task("ev-bad", bytes(5)),
                ],
            )
            sub.setsockopt(zmq.RCVTIMEO, 5000)
            return [parse_event(sub.recv_multipart()) for _ in range(2)]
        finally:
            sub.close()

    (topic1, ok), (topic2, bad) = await trio.to_thread.run_sync(subscribe_and_collect)
    assert topic1 == topic2 == b"ai_events"
    assert ok.type == "digit_recognition.completed"
    assert ok.payload["task_id"] == "ev-ok" and ok.payload["label"] == str(HELD.labels[4])
    assert ok.payload["meeting_id"] == "456" and ok.payload["user_id"] == "789" and "lang" not in ok.payload
    assert type(ok.payload["latency"]) is int and "confidence" in ok.payload and ok.payload["timestamp"].endswith("Z")
    assert bad.type == "digit_recognition.failed" and bad.payload["task_id"] == "ev-bad"
    assert "expected 64 bytes" in bad.payload["error"]


async def test_in_process_ask() -> None:
    from switchyard.services.inference.protocol import TaskRequest

    async with _service(events_endpoint="") as svc:
        reply = await svc.ref.ask(TaskRequest(task_id="a", task_type="digit_recognition", input_data=pixels(5)))
        assert reply.ok and reply.result["label"] == str(HELD.labels[5])


async def test_slow_task_gets_a_timeout_reply_and_busy_beyond_max_in_flight() -> None:
    # a batch window of 1 s holds every task long enough to see both limits act
    async with _service(
        max_delay_ms=1000.0, limits=attrs.evolve(InferenceConfig().limits, request_timeout=0.3), max_in_flight=1
    ) as svc:

        def two_at_once() -> list[TaskReply]:
            ctx = zmq.Context.instance()
            socks = [ctx.socket(zmq.DEALER) for _ in range(2)]
            try:
                for _n, sock in enumerate(socks):
                    sock.setsockopt(zmq.LINGER, 0)
                    sock.setsockopt(zmq.RCVTIMEO, 5000)
                    sock.connect(svc.endpoint)
                socks[0].send_multipart([b"", digit_task("slow", pixels(0))])
                time.sleep(0.1)
                socks[1].send_multipart([b"", digit_task("second", pixels(1))])
                return [parse_reply(sock.recv_multipart()[1]) for sock in socks]
            finally:
                for sock in socks:
                    sock.close()

        slow, second = await trio.to_thread.run_sync(two_at_once)
        assert second.status == "error" and second.task_id == "second" and second.error.startswith("busy: 1 tasks")
        assert slow.status == "error" and slow.task_id == "slow" and "timed out" in slow.error


async def test_spawn_fails_clearly_when_a_preloaded_model_cannot_load(tmp_path: Path) -> None:
    from switchyard.services.inference.models import ModelError

    missing = ModelConfig(name="ghost", path="ghost.onnx", task_types=["x"])
    async with open_system("preload-test") as system:
        config = InferenceConfig(
            endpoint=free_tcp_endpoint(), events_endpoint="", models_dir=str(tmp_path), models=[missing]
        )
        with pytest.raises(ModelError, match="file 'ghost.onnx' does not exist in the models directory"):
            await system.spawn(InferenceActor, name="inference", config=config)
        assert "inference" not in system.names()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("nope.onnx", "model file 'nope.onnx' does not exist"),
        ("../../../etc/passwd", "is outside the models directory"),
    ],
)
def test_check_names_a_missing_or_escaping_model_file(path: str, message: str) -> None:
    from switchyard.runtime import ConfigError
    from switchyard.runtime.manifest import parse_manifest

    text = f"""
[app]
name = "m"
status = false

[[actor]]
name = "inference"
kind = "inference"
[actor.config]
endpoint = "tcp://127.0.0.1:5999"
events_endpoint = ""
[[actor.config.models]]
name = "x"
path = "{path}"
"""
    with pytest.raises(ConfigError, match="actor 'inference'.*models\\[0\\].path") as info:
        parse_manifest(text, source="m.toml")
    assert message in str(info.value)
