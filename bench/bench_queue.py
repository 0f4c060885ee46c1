"""Redis queue path: throughput with 1 and 2 worker processes, tasks lost or duplicated
when a worker is SIGKILLed mid-run, and silero-vad's real-time factor.

``python -m bench queue``. Starts its own redis-server (no persistence) on a free
port; every run is bounded (task counts below, a timeout on each wait).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import time
from typing import Any

import numpy as np
import trio

from bench._stats import fmt, median, ratio, section, table
from switchyard import open_system
from switchyard.apps.models import digits_heldout
from switchyard.services.inference.redis_queue import QUEUES, open_redis
from switchyard.services.inference.redis_server import EventsRecorder, local_redis
from switchyard.services.inference.redis_worker import RedisQueueActor, RedisQueueConfig

THROUGHPUT_TASKS = 2000
RUNS = 3
KILL_TASKS = 150
VAD_SECONDS = 60.0
HELD = digits_heldout()


def digit_task(i: int) -> bytes:
    pixels = base64.b64encode(HELD.pixels[i % len(HELD.pixels)].tobytes()).decode()
    payload = {"task_id": f"d{i}", "input_data": pixels, "meeting_id": i}
    return json.dumps(
        {"id": f"d{i}", "type": "ai.digit_recognition", "priority": "normal", "payload": payload}
    ).encode()


def vad_task(i: int, audio: bytes) -> bytes:
    payload = {"task_id": f"v{i}", "audio_data": base64.b64encode(audio).decode(), "params": {"sample_rate": "16000"}}
    return json.dumps({"id": f"v{i}", "Type": "ai.voice_activity_detection", "Payload": payload}).encode()


async def push(url: str, raws: list[bytes]) -> None:
    async with open_redis(url) as client:
        for start in range(0, len(raws), 500):
            await client.lpush("normal_queue", raws[start : start + 500])


async def flush(url: str) -> None:
    async with open_redis(url) as client:
        await client.flushdb()


async def throughput(url: str, workers: int, concurrency: int = 1) -> float:
    """Tasks/s for one batch of digit tasks, after a warm-up, with ``workers`` processes."""
    await flush(url)
    counter = EventsRecorder()
    cfg = RedisQueueConfig(redis_url=url, workers=workers, threads=1, vad_enabled=False, concurrency=concurrency)
    async with trio.open_nursery() as outer:
        await outer.start(counter.run, url)
        async with open_system("bench-queue") as system:
            await system.spawn(RedisQueueActor, name="inference_redis", config=cfg)
            warm = 20 * workers
            await push(url, [digit_task(-1 - i) for i in range(warm)])
            await counter.wait_for(warm, 60)
            await trio.sleep(0.3)  # every worker polling
            raws = [digit_task(i) for i in range(THROUGHPUT_TASKS)]
            start = time.perf_counter()
            await push(url, raws)
            await counter.wait_for(warm + THROUGHPUT_TASKS, 120)
            took = time.perf_counter() - start
        counter.stop()
    return THROUGHPUT_TASKS / took


async def kill_run(url: str) -> dict[str, Any]:
    """Two workers on VAD tasks; SIGKILL one after 30 events; count what comes back."""
    await flush(url)
    audio = np.random.default_rng(0).normal(0, 3000, 16000 * 5).astype("<i2").tobytes()
    counter = EventsRecorder()
    cfg = RedisQueueConfig(redis_url=url, workers=2, threads=1, visibility_timeout=30.0)
    async with trio.open_nursery() as outer:
        await outer.start(counter.run, url)
        async with open_system("bench-queue-kill") as system:
            ref = await system.spawn(RedisQueueActor, name="inference_redis", config=cfg)
            await push(url, [vad_task(i, audio) for i in range(KILL_TASKS)])
            await counter.wait_for(30, 120)
            async with open_redis(url) as client:
                in_flight = int(await client.hlen("processing_started"))
            os.kill((await ref.ask("status"))["pids"][0], signal.SIGKILL)
            try:
                await counter.wait_for(KILL_TASKS, 25)
            except trio.TooSlowError:
                pass
            await trio.sleep(1.5)  # time for any duplicate to show
            restarts = (await ref.ask("status"))["restarts"]
        counter.stop()
    async with open_redis(url) as client:
        left = sum([int(await client.llen(k)) for k in (*QUEUES, "processing_queue")])
    ids = [event["payload"]["task_id"] for event in counter.items]
    unique = set(ids)
    return {
        "lost": KILL_TASKS - len(unique),
        "duplicated": len(ids) - len(unique),
        "in_flight_at_kill": in_flight,
        "restarts": restarts,
        "left_in_queues": left,
    }


def vad_rtf() -> tuple[float, float]:
    """Audio seconds per compute second: our task path (48 kHz PCM in, segments out) and
    silero-vad's ONNX file run directly on 16 kHz float windows."""
    import onnxruntime as ort

    from switchyard.services.inference.vad import SileroVad, find_model

    rng = np.random.default_rng(1)
    pcm48 = rng.normal(0, 3000, int(48000 * VAD_SECONDS)).astype("<i2").tobytes()
    vad = SileroVad()
    ours = []
    for _ in range(RUNS):
        start = time.perf_counter()
        vad.detect(pcm48, {"format": "pcm", "sample_rate": "48000"})
        ours.append(VAD_SECONDS / (time.perf_counter() - start))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(find_model()), sess_options=options, providers=["CPUExecutionProvider"])
    audio = rng.normal(0, 0.1, int(16000 * VAD_SECONDS)).astype(np.float32)
    sr = np.array(16000, dtype=np.int64)
    direct = []
    for _ in range(RUNS):
        start = time.perf_counter()
        state = np.zeros((2, 1, 128), dtype=np.float32)
        context = np.zeros(64, dtype=np.float32)
        for i in range(audio.size // 512):
            chunk = audio[i * 512 : (i + 1) * 512]
            x = np.concatenate([context, chunk]).reshape(1, -1)
            _, state = session.run(None, {"input": x, "state": state, "sr": sr})
            context = chunk[-64:]
        direct.append(VAD_SECONDS / (time.perf_counter() - start))
    return median(ours), median(direct)


async def queue_benches() -> tuple[dict[tuple[int, int], float], dict[str, Any]]:
    async with local_redis() as url:
        rates = {(w, c): median([await throughput(url, w, c) for _ in range(RUNS)]) for c in (1, 4) for w in (1, 2)}
        killed = await kill_run(url)
    return rates, killed


def main() -> int:
    rates, killed = trio.run(queue_benches)
    ours, direct = vad_rtf()
    rows = [
        [
            f"{w} worker process{'es' if w > 1 else ''}, concurrency {c}",
            fmt(rates[w, c]),
            ratio(rates[w, c], rates[1, c]),
        ]
        for c in (1, 4)
        for w in (1, 2)
    ]
    body = "\n\n".join(
        [
            f"Digit tasks ({THROUGHPUT_TASKS} per run, median of {RUNS}), pushed at once, timed to the last "
            "`ai_events` message:\n\n" + table(["workers", "tasks/s", "vs 1 worker, same concurrency"], rows),
            f"Two workers on {KILL_TASKS} VAD tasks (5 s audio each), one SIGKILLed after 30 events "
            f"(visibility_timeout 30 s: the actor returns a dead worker's tasks at once):\n\n"
            + table(
                ["lost", "duplicated", "in processing at the kill", "restarts", "left in queues"],
                [
                    [
                        killed["lost"],
                        killed["duplicated"],
                        killed["in_flight_at_kill"],
                        killed["restarts"],
                        killed["left_in_queues"],
                    ]
                ],
            ),
            f"VAD real-time factor (audio s per compute s, {VAD_SECONDS:g} s of audio, median of {RUNS}, one thread):\n\n"
            + table(
                ["path", "real-time factor", "vs silero ONNX direct"],
                [
                    ["silero-vad ONNX run directly (16 kHz float)", fmt(direct), ratio(direct, direct)],
                    [
                        "voice_activity_detection task (48 kHz s16le, resample, segments)",
                        fmt(ours),
                        ratio(ours, direct),
                    ],
                ],
            ),
        ]
    )
    print(section("Redis queue path and VAD", "python -m bench queue", body))
    return 0 if killed["lost"] == 0 and killed["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
