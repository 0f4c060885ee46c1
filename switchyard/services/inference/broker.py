"""The scale-out front of the inference service: clients in, free workers out.

The broker serves clients exactly like :class:`~switchyard.services.inference.service.InferenceActor`
(same endpoint, same JSON and binary forms, one reply per request) but runs no model:
it hands each request, frames untouched, to a worker
(:mod:`switchyard.services.inference.worker`) connected DEALER to ``worker_endpoint``,
and publishes the event the worker sends back on its own ``ai_events`` PUB socket.

What a client may rely on:

* Tasks go to ready workers with free capacity (most free first); while none is
  free they wait in a FIFO queue, at most ``queue_timeout`` seconds, then get an
  ``error`` reply saying no worker was free. More than ``max_pending`` waiting
  tasks: an immediate ``busy`` error reply.
* A worker that dies mid-task (its process exits, or it misses
  ``heartbeat_liveness`` heartbeats, or it cannot be reached) has each of its tasks
  retried once on another worker; a task that loses a second worker gets an
  ``error`` reply. A late answer from a worker presumed dead is dropped, so no
  client ever gets two replies. With ``request_timeout`` every request is answered
  within a bounded time whatever happens: never silence.
* ``workers = N`` makes the broker start N local worker processes (config in the
  nested ``worker`` table) and restart any that exits, after ``restart_delay``.
  Workers on other hosts connect to ``worker_endpoint`` on their own.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import sys
from functools import partial
from typing import Any

import attrs
import trio
import zmq

from switchyard.protocols.codec import json_codec
from switchyard.runtime import Actor
from switchyard.runtime.ratelog import RateLimitedLog
from switchyard.services.inference.service import failure_reply, start_client_server, start_events
from switchyard.services.inference.worker import InferenceWorkerConfig
from switchyard.services.inference.worker_protocol import (
    Bye,
    Done,
    Ready,
    WorkerProtocolError,
    encode_heartbeat,
    encode_task,
    parse_from_worker,
)
from switchyard.transports.zmq import SocketOptions, ZmqSocket, open_socket

__all__ = ["InferenceBrokerActor", "InferenceBrokerConfig"]


@attrs.frozen
class InferenceBrokerConfig:
    endpoint: str = "tcp://127.0.0.1:5555"
    #: ROUTER the workers connect their DEALER to.
    worker_endpoint: str = "tcp://127.0.0.1:5557"
    #: PUB endpoint for ``ai_events`` ("" = publish nothing).
    events_endpoint: str = "tcp://127.0.0.1:5556"
    events_topic: str = "ai_events"
    max_message_size: int = 4 << 20
    #: Seconds before any request gets an error reply, whatever happened (0 = no limit).
    request_timeout: float = 30.0
    max_concurrent: int = 4096
    #: Seconds a task waits for a free worker before an error reply.
    queue_timeout: float = 5.0
    max_pending: int = 10_000
    heartbeat_interval: float = 0.5
    heartbeat_liveness: int = 3
    #: Local worker processes to start and keep running.
    workers: int = 0
    restart_delay: float = 1.0
    #: Config of the local worker processes (their broker_endpoint is set by the broker).
    worker: InferenceWorkerConfig = attrs.Factory(InferenceWorkerConfig)


@attrs.define(eq=False)
class _Task:
    key: bytes
    request: list[Any]
    enqueued: float
    done: trio.Event = attrs.Factory(trio.Event)
    reply: Any = None
    attempts: int = 0
    abandoned: bool = False


@attrs.define(eq=False)
class _Worker:
    identity: bytes
    capacity: int
    pid: int
    host: str
    last_seen: float
    in_flight: dict[bytes, _Task] = attrs.Factory(dict)
    draining: bool = False
    served: int = 0

    @property
    def free(self) -> int:
        return 0 if self.draining else self.capacity - len(self.in_flight)

    @property
    def label(self) -> str:
        return f"{self.identity.decode(errors='replace')} (pid {self.pid} on {self.host})"


class InferenceBrokerActor(Actor):
    """Inference broker: clients on REQ/REP, tasks to DEALER workers, retry once, ai_events."""

    Config = InferenceBrokerConfig

    async def on_start(self) -> None:
        config: InferenceBrokerConfig = self.config
        self._workers: dict[bytes, _Worker] = {}
        self._pending: collections.deque[_Task] = collections.deque()
        self._keys = itertools.count(1)
        self._wake = trio.Event()
        self.processes: dict[int, Any] = {}
        self.stats = {
            "tasks": 0,
            "dispatched": 0,
            "retried": 0,
            "lost_twice": 0,
            "queue_timeouts": 0,
            "busy": 0,
            "late_replies": 0,
            "workers_lost": 0,
            "bad_worker_messages": 0,
        }
        self.failures = RateLimitedLog(self.log, level=logging.INFO, what="failed tasks")
        self._bad = RateLimitedLog(self.log, what="bad worker messages")
        options = SocketOptions(router_mandatory=True, linger_ms=0, sndhwm=100_000, rcvhwm=100_000)
        self._wsock: ZmqSocket = await self.enter(open_socket(zmq.ROUTER, bind=config.worker_endpoint, options=options))
        self.worker_endpoint = self._wsock.endpoints[0]
        self.events, self.events_endpoint = await start_events(self, config)
        self.nursery.start_soon(self._receive_from_workers)
        self.nursery.start_soon(self._dispatch)
        self.nursery.start_soon(self._monitor)
        for index in range(config.workers):
            self.nursery.start_soon(self._keep_worker_process, index)
        self.server, self.endpoint = await start_client_server(self, config, self._serve_frames)
        self.log.info(
            "inference broker on %s, workers on %s, events on %s, %d local worker(s)",
            self.endpoint,
            self.worker_endpoint,
            self.events_endpoint or "off",
            config.workers,
        )

    async def on_stop(self) -> None:
        await self.server.drain()

    # -- clients ---------------------------------------------------------------------------
    async def _serve_frames(self, frames: list[Any]) -> Any:
        self.stats["tasks"] += 1
        if len(self._pending) >= self.config.max_pending:
            self.stats["busy"] += 1
            return failure_reply(f"busy: {len(self._pending)} tasks waiting for a worker", frames)
        task = _Task(key=b"%x" % next(self._keys), request=frames, enqueued=trio.current_time())
        self._pending.append(task)
        self._wake.set()
        try:
            await task.done.wait()
        finally:
            if not task.done.is_set():
                task.abandoned = True  # timed out or cancelled: drop it wherever it is
        return task.reply

    def _finish(self, task: _Task, reply: Any, *, failed: bool = False) -> None:
        if task.done.is_set():
            return
        task.reply = reply
        task.done.set()
        if failed:
            self.failures("task failed (broker): %s", bytes(reply)[:300].decode("utf-8", "replace"))

    # -- dispatch --------------------------------------------------------------------------
    def _pick(self) -> _Worker | None:
        best = None
        for worker in self._workers.values():
            if worker.free > 0 and (best is None or worker.free > best.free):
                best = worker
        return best

    async def _dispatch(self) -> None:
        while True:
            self._wake = trio.Event()
            while self._pending:
                worker = self._pick()
                if worker is None:
                    break
                task = self._pending.popleft()
                if task.abandoned or task.done.is_set():
                    continue
                task.attempts += 1
                worker.in_flight[task.key] = task
                self.stats["dispatched"] += 1
                message = [worker.identity, *encode_task(task.key, task.request)]
                try:
                    if not self._wsock.try_send_multipart(message):
                        await self._wsock.send_multipart(message)
                except zmq.ZMQError as exc:
                    self._lose(worker, f"unreachable: {exc.strerror}")
            await self._wake.wait()

    # -- workers ---------------------------------------------------------------------------
    async def _receive_from_workers(self) -> None:
        while True:
            frames = await self._wsock.recv_multipart(copy=False)
            while True:  # handle the whole queued burst, then yield once
                self._on_worker_message(frames)
                try:
                    frames = self._wsock.recv_multipart_nowait(copy=False)
                except trio.WouldBlock:
                    break

    def _on_worker_message(self, frames: list[Any]) -> None:
        identity = frames[0].bytes
        try:
            message = parse_from_worker(frames[1:])
        except WorkerProtocolError as exc:
            self.stats["bad_worker_messages"] += 1
            self._bad("ignored a bad message from %r: %s", identity, exc)
            return
        now = trio.current_time()
        worker = self._workers.get(identity)
        if isinstance(message, Ready):
            if worker is not None:
                self._lose(worker, "announced itself again")
            self._workers[identity] = _Worker(identity, message.capacity, message.pid, message.host, now)
            self.log.info(
                "worker %s ready, capacity %d, models %s",
                identity.decode(errors="replace"),
                message.capacity,
                ", ".join(message.models),
            )
            self._wake.set()
            return
        if worker is None:
            if isinstance(message, Done):
                self.stats["late_replies"] += 1
            return  # an unknown worker reconnects by itself once we stay silent
        worker.last_seen = now
        if isinstance(message, Done):
            task = worker.in_flight.pop(message.key, None)
            if task is None:
                self.stats["late_replies"] += 1
                return
            worker.served += 1
            self._finish(task, message.reply)
            if self.events is not None and message.event.buffer.nbytes:
                self.events.publish_frames([self.events.topic, message.event])
            self._wake.set()
        elif isinstance(message, Bye):
            worker.draining = True
            if not worker.in_flight:
                del self._workers[identity]
            self.log.info("worker %s is leaving", worker.label)

    def _lose(self, worker: _Worker, reason: str) -> None:
        """Forget ``worker``; retry its tasks once elsewhere, fail those already retried."""
        if self._workers.get(worker.identity) is worker:
            del self._workers[worker.identity]
        self.stats["workers_lost"] += 1
        tasks = [t for t in worker.in_flight.values() if not (t.abandoned or t.done.is_set())]
        worker.in_flight.clear()
        self.log.warning("lost worker %s (%s) with %d task(s) in flight", worker.label, reason, len(tasks))
        now = trio.current_time()
        for task in reversed(tasks):
            if task.attempts >= 2:
                self.stats["lost_twice"] += 1
                message = (
                    f"inference worker lost while running the task ({reason}); "
                    "it had already been retried once on another worker"
                )
                self._finish(task, failure_reply(message, task.request), failed=True)
            else:
                self.stats["retried"] += 1
                task.enqueued = now
                self._pending.appendleft(task)
        self._wake.set()

    async def _monitor(self) -> None:
        config: InferenceBrokerConfig = self.config
        silence = config.heartbeat_interval * config.heartbeat_liveness
        while True:
            await trio.sleep(config.heartbeat_interval)
            now = trio.current_time()
            for worker in list(self._workers.values()):
                if now - worker.last_seen > silence:
                    self._lose(worker, f"silent for {now - worker.last_seen:.1f} s")
                    continue
                try:
                    await self._wsock.send_multipart([worker.identity, *encode_heartbeat()])
                except zmq.ZMQError as exc:
                    self._lose(worker, f"unreachable: {exc.strerror}")
            while self._pending and now - self._pending[0].enqueued > config.queue_timeout:
                task = self._pending.popleft()
                if task.abandoned or task.done.is_set():
                    continue
                self.stats["queue_timeouts"] += 1
                why = "no inference worker is connected" if not self._workers else "no inference worker was free"
                self._finish(task, failure_reply(f"{why} within {config.queue_timeout:g} s", task.request), failed=True)

    # -- local worker processes ------------------------------------------------------------
    def _worker_command(self, index: int, generation: int) -> tuple[list[str], bytes, str]:
        config: InferenceBrokerConfig = self.config
        prefix = f"{self.name}.w{index}.{generation}"
        connect = self.worker_endpoint.replace("0.0.0.0", "127.0.0.1").replace("://*:", "://127.0.0.1:")
        worker = attrs.evolve(
            config.worker,
            broker_endpoint=connect,
            identity=prefix,
            heartbeat_interval=config.heartbeat_interval,
            heartbeat_liveness=config.heartbeat_liveness,
            events_topic=config.events_topic,
        )
        command = [
            sys.executable,
            "-m",
            "switchyard.services.inference.worker",
            "--config",
            "-",
            "--name",
            f"{self.name}.w{index}",
            "--parent-pid",
            str(os.getpid()),
        ]
        return command, json_codec.encode(attrs.asdict(worker)), prefix

    async def _keep_worker_process(self, index: int) -> None:
        for generation in itertools.count(1):
            command, config_json, prefix = self._worker_command(index, generation)
            async with trio.open_nursery() as nursery:
                process = await nursery.start(partial(trio.run_process, command, stdin=config_json, check=False))
                self.processes[index] = process
                self.log.info("started local worker %d (pid %d)", index, process.pid)
                code = await process.wait()
            self.processes.pop(index, None)
            for worker in [w for i, w in self._workers.items() if i.startswith(prefix.encode() + b"-")]:
                self._lose(worker, f"its process {process.pid} exited with {code}")
            self.log.warning(
                "local worker %d (pid %d) exited with %s; restarting in %g s",
                index,
                process.pid,
                code,
                self.config.restart_delay,
            )
            await trio.sleep(self.config.restart_delay)

    # -- status ----------------------------------------------------------------------------
    async def handle(self, message: Any) -> Any:
        if message == "status":
            return self.status()
        raise ValueError(f"unknown message {message!r}: send 'status'")

    def status(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "worker_endpoint": self.worker_endpoint,
            "events_endpoint": self.events_endpoint,
            "pending": len(self._pending),
            "workers": [
                {
                    "identity": w.identity.decode(errors="replace"),
                    "pid": w.pid,
                    "host": w.host,
                    "capacity": w.capacity,
                    "in_flight": len(w.in_flight),
                    "served": w.served,
                    "draining": w.draining,
                }
                for w in self._workers.values()
            ],
            "processes": {index: p.pid for index, p in self.processes.items()},
            "stats": dict(self.stats),
            "events": dict(self.events.stats) if self.events else {},
        }
