"""The ``inference_redis`` actor: local worker processes on the Redis task queues.

The actor spawns ``workers`` processes (``python -m
switchyard.services.inference.redis_worker``), each running a
:class:`~switchyard.services.inference.redis_queue.QueueWorker` over its own
:class:`~switchyard.services.inference.engine.InferenceEngine` (the manifest's ONNX
models plus ``voice_activity_detection``). A process that exits is restarted after
``restart_delay`` seconds (doubling, up to 10 s, while it keeps exiting within 5 s of
its start); a process whose parent is gone stops. ``workers = 0`` runs
one worker inside the actor instead. Any number of ``switchyard run`` processes, on
any hosts, pointed at the same Redis share the queues: Redis does all coordination.

What a caller may rely on: ``spawn`` returns once Redis answered a PING (in-process
worker) or the worker processes were started; ``ask("status")`` returns the actor's
counters and the worker pids.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

import attrs
import coredis
import trio

from switchyard.runtime import Actor
from switchyard.services.inference.engine import EngineConfig, InferenceEngine
from switchyard.services.inference.models import check_model_files
from switchyard.services.inference.protocol import TaskReply, TaskRequest
from switchyard.services.inference.redis_queue import (
    QUEUES,
    QueueConfig,
    QueueKeys,
    QueueWorker,
    open_redis,
    redis_url,
)
from switchyard.services.inference.redis_tasks import QueueTask
from switchyard.services.inference.vad import VadConfig, VadUnavailable, register_vad

__all__ = ["RedisQueueActor", "RedisQueueConfig", "serve_queue"]

log = logging.getLogger("switchyard.inference.redis")


@attrs.frozen
class RedisQueueConfig(EngineConfig):
    """Manifest settings: the engine's (models, batching) plus the queue's."""

    #: Local worker processes (0 = one worker inside the actor).
    workers: int = 1
    #: Seconds before an exited worker process is started again.
    restart_delay: float = 0.5
    redis_url: str = ""
    visibility_timeout: float = 30.0
    max_retries: int = 3
    concurrency: int = 1
    idle_poll: float = 0.05
    reap_interval: float = 0.0
    dedup_ttl: int = 86_400
    channel: str = "ai_events"
    #: The queues this worker takes from, highest priority first.
    queues: list[str] = attrs.Factory(lambda: list(QUEUES))
    #: Serve ``voice_activity_detection`` (needs ``pip install --no-deps silero-vad``).
    vad_enabled: bool = True
    vad: VadConfig = attrs.Factory(VadConfig)

    def queue_config(self) -> QueueConfig:
        return QueueConfig(
            redis_url=redis_url(self.redis_url),
            visibility_timeout=self.visibility_timeout,
            max_retries=self.max_retries,
            concurrency=self.concurrency,
            idle_poll=self.idle_poll,
            reap_interval=self.reap_interval,
            dedup_ttl=self.dedup_ttl,
            max_input_bytes=self.max_input_bytes,
            channel=self.channel,
        )


async def serve_queue(
    config: RedisQueueConfig,
    *,
    worker_id: str = "",
    task_status: trio.TaskStatus[QueueWorker] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one queue worker (engine, VAD, Redis client) until cancelled."""
    engine = InferenceEngine(config, logger=log)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        if config.vad_enabled:
            try:
                await register_vad(engine, config.vad)
            except VadUnavailable as exc:
                log.warning("voice_activity_detection off: %s", exc)

        def known() -> list[str]:
            return [*engine.registry.task_types, *engine.handlers]

        async def run(task: QueueTask) -> TaskReply:
            request = TaskRequest(task.id, task.task_type, task.model, task.input_data, task.params)
            return await engine.run_request(request)

        queue = config.queue_config()
        # The worker's nursery is inside the client's block: the worker still has its
        # client while it hands its tasks back at stop.
        async with open_redis(queue.redis_url) as client, trio.open_nursery() as inner:
            keys = QueueKeys(queues=tuple(config.queues), channel=queue.channel)
            worker = QueueWorker(client, run, known, queue, keys=keys, worker_id=worker_id, logger=log)
            await inner.start(worker.run)
            log.info("queue worker %d on %s serving %s", os.getpid(), queue.redis_url, ", ".join(known()))
            task_status.started(worker)
            await trio.sleep_forever()


class RedisQueueActor(Actor):
    """Owns the local queue worker processes (or one in-process worker)."""

    Config = RedisQueueConfig

    @classmethod
    def check_config(cls, config: RedisQueueConfig) -> None:
        check_model_files(config.models, config.models_dir)

    mailbox_capacity = 16

    async def on_start(self) -> None:
        config: RedisQueueConfig = self.config
        self.pids: dict[int, int] = {}
        self.restarts = 0
        self.worker: QueueWorker | None = None
        if config.workers <= 0:
            self.worker = await self.nursery.start(serve_queue, config)
            return
        blob = json.dumps(attrs.asdict(config))
        for slot in range(config.workers):
            self.nursery.start_soon(self._keep_running, slot, blob)
        self.log.info("started %d queue worker process(es) on %s", config.workers, redis_url(config.redis_url))

    async def _keep_running(self, slot: int, blob: str) -> None:
        config: RedisQueueConfig = self.config
        command = [
            sys.executable, "-m", "switchyard.services.inference.redis_worker",
            "--config-json", blob, "--parent-pid", str(os.getpid()), "--log-level",
            logging.getLevelName(self.log.getEffectiveLevel()),
        ]  # fmt: skip
        delay = config.restart_delay
        generation = 0
        while True:
            started = trio.current_time()
            generation += 1
            worker_id = f"{socket.gethostname()}:{os.getpid()}:w{slot}.{generation}"
            # Own session: a terminal's Ctrl-C reaches only this process, which stops its workers.
            process = await trio.lowlevel.open_process([*command, "--worker-id", worker_id], start_new_session=True)
            self.pids[slot] = process.pid
            try:
                code = await process.wait()
            finally:
                if process.returncode is None:
                    process.terminate()
                    with trio.move_on_after(5) as scope:
                        scope.shield = True
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
            self.pids.pop(slot, None)
            self.restarts += 1
            await self._return_tasks_of(worker_id)
            # A worker that keeps dying at start (Redis unreachable, a broken install) backs off to 10 s.
            delay = config.restart_delay if trio.current_time() - started > 5 else min(10.0, max(delay * 2, 0.1))
            self.log.warning("queue worker %d exited with %s; restarting in %gs", slot, code, delay)
            await trio.sleep(delay)

    async def _return_tasks_of(self, worker_id: str) -> None:
        """A worker process is gone: its tasks go back to their queues now, not after visibility_timeout."""
        config: RedisQueueConfig = self.config
        queue = config.queue_config()

        async def never(task: QueueTask) -> TaskReply:  # this worker object only reaps
            raise RuntimeError("not a running worker")

        try:
            async with open_redis(queue.redis_url) as client:
                keys = QueueKeys(queues=tuple(config.queues), channel=queue.channel)
                reaper = QueueWorker(client, never, list, queue, keys=keys, logger=self.log)
                await reaper.reap_owner(worker_id)
        except (coredis.exceptions.RedisError, OSError) as exc:
            self.log.warning("could not return the tasks of %s (the reaper will): %s", worker_id, exc)

    async def handle(self, message: Any) -> Any:
        if message == "status":
            return {
                "pids": dict(self.pids),
                "restarts": self.restarts,
                "worker": dict(self.worker.stats) if self.worker else {},
            }
        raise ValueError(f"unknown message {message!r}: send 'status'")


# -- process entry point ----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """One queue worker process until SIGINT/SIGTERM or its parent is gone."""
    from switchyard.runtime.config import build_config
    from switchyard.runtime.errors import ConfigError
    from switchyard.runtime.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m switchyard.services.inference.redis_worker")
    parser.add_argument("--config-json", default="{}", help="RedisQueueConfig as JSON")
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("--worker-id", default="", help="written next to each task taken (default: host:pid:random)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = build_config(RedisQueueConfig, json.loads(args.config_json), where="redis queue worker")
    except (ValueError, ConfigError) as exc:
        print(f"redis_worker: {exc}", file=sys.stderr)
        return 2
    trio.run(_main, config, args.parent_pid, args.worker_id)
    return 0


async def _main(config: RedisQueueConfig, parent_pid: int, worker_id: str) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_until_signalled, nursery.cancel_scope)
        if parent_pid:
            nursery.start_soon(_exit_with_parent, parent_pid, nursery.cancel_scope)
        await nursery.start(partial(serve_queue, config, worker_id=worker_id))


async def _until_signalled(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:  # keep receiving until cancelled: a second signal must not be re-raised
            scope.cancel()


async def _exit_with_parent(parent_pid: int, scope: trio.CancelScope) -> None:
    while os.getppid() == parent_pid:  # noqa: ASYNC110 - nothing to wait on but the parent pid
        await trio.sleep(0.5)
    log.warning("parent %d is gone; stopping", parent_pid)
    scope.cancel()


if __name__ == "__main__":
    sys.exit(main())
