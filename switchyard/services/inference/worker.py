"""A scale-out inference worker: the engine behind a DEALER connected to a broker.

The worker connects to ``broker_endpoint`` (see
:mod:`switchyard.services.inference.broker`), announces itself READY with its
``capacity`` (tasks it runs at once, which its batcher stacks) and serves TASK
messages with the same engine as the single-process service, sending back each
reply and the encoded ``ai_events`` body for the broker to publish. It heartbeats
every ``heartbeat_interval`` seconds; if the broker is silent for
``heartbeat_liveness`` intervals it drops the connection, reconnects and announces
itself again (so a restarted broker gets its workers back). On a graceful stop it
finishes what it holds and says BYE.

Run it from a manifest (kind ``inference_worker``, on this host or another), or
let a broker spawn local ones; the process entry point is
``python -m switchyard.services.inference.worker --config FILE|-`` (JSON config).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
import zmq

from switchyard.protocols.codec import json_codec
from switchyard.runtime import Actor
from switchyard.runtime.ratelog import RateLimitedLog
from switchyard.services.inference.engine import EngineConfig, InferenceEngine
from switchyard.services.inference.models import check_model_files
from switchyard.services.inference.protocol import encode_event
from switchyard.services.inference.worker_protocol import (
    Heartbeat,
    Ready,
    Task,
    WorkerProtocolError,
    encode_bye,
    encode_done,
    encode_heartbeat,
    encode_ready,
    parse_from_broker,
)
from switchyard.transports.zmq import SocketOptions, ZmqSocket, open_socket

__all__ = ["InferenceWorkerActor", "InferenceWorkerConfig", "main"]


@attrs.frozen
class InferenceWorkerConfig(EngineConfig):
    """Worker settings; the model/batching fields come from :class:`EngineConfig`."""

    broker_endpoint: str = "tcp://127.0.0.1:5557"
    #: Tasks this worker accepts at once (the broker never sends more).
    capacity: int = 64
    heartbeat_interval: float = 0.5
    heartbeat_liveness: int = 3
    #: Identity prefix on the broker ("" = host-pid); a per-connection suffix is added.
    identity: str = ""
    events_topic: str = "ai_events"


class InferenceWorkerActor(Actor):
    """Scale-out inference worker: DEALER to an inference_broker, same engine and batching."""

    Config = InferenceWorkerConfig

    @classmethod
    def check_config(cls, config: InferenceWorkerConfig) -> None:
        check_model_files(config.models, config.models_dir)

    async def on_start(self) -> None:
        config: InferenceWorkerConfig = self.config
        if config.capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.engine = InferenceEngine(config, logger=self.log)
        await self.nursery.start(self.engine.run)
        self.prefix = config.identity or f"{socket.gethostname()}-{os.getpid()}"
        self.connections = 0
        self.served = 0
        self._stopping = False
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._sock: ZmqSocket | None = None
        self._bad = RateLimitedLog(self.log, what="bad broker messages")
        self.nursery.start_soon(self._stay_connected)

    async def on_stop(self) -> None:
        # BYE first: the broker sends nothing more; then finish what we hold.
        self._stopping = True
        if self._sock is not None and not self._sock.closed:
            try:
                await self._sock.send_multipart(encode_bye())
            except (trio.ClosedResourceError, zmq.ZMQError):
                pass
        await self._idle.wait()

    async def handle(self, message: Any) -> Any:
        if message == "status":
            return {
                "identity": self.prefix,
                "connections": self.connections,
                "served": self.served,
                "in_flight": self._in_flight,
                "tasks": dict(self.engine.stats),
                "batches": self.engine.batcher_stats(),
            }
        raise ValueError(f"unknown message {message!r}: send 'status'")

    async def _stay_connected(self) -> None:
        config: InferenceWorkerConfig = self.config
        while True:
            self.connections += 1
            identity = f"{self.prefix}-{self.connections}-{uuid.uuid4().hex[:6]}".encode()
            options = SocketOptions(identity=identity, linger_ms=0, sndhwm=10_000, rcvhwm=10_000)
            async with open_socket(zmq.DEALER, connect=config.broker_endpoint, options=options) as sock:
                self._sock = sock
                ready = Ready(
                    capacity=config.capacity,
                    pid=os.getpid(),
                    host=socket.gethostname(),
                    task_types=tuple(self.engine.registry.task_types),
                    models=tuple(self.engine.registry.names),
                )
                await sock.send_multipart(encode_ready(ready))
                self.log.info("worker %s announced to %s", identity.decode(), config.broker_endpoint)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._heartbeat, sock)
                    await self._serve(sock, nursery)
                    nursery.cancel_scope.cancel()
                self._sock = None
            if self._stopping:
                return
            self.log.warning(
                "broker %s silent for %d heartbeats; reconnecting", config.broker_endpoint, config.heartbeat_liveness
            )

    async def _heartbeat(self, sock: ZmqSocket) -> None:
        while True:
            await trio.sleep(self.config.heartbeat_interval)
            await sock.send_multipart(encode_heartbeat())

    async def _serve(self, sock: ZmqSocket, nursery: trio.Nursery) -> None:
        """Serve until the broker falls silent (then return to reconnect)."""
        silence = self.config.heartbeat_interval * self.config.heartbeat_liveness
        while True:
            frames = None
            with trio.move_on_after(silence):
                frames = await sock.recv_multipart(copy=False)
            if frames is None:
                return
            while True:  # take the whole queued burst, then yield once
                self._accept(frames, sock, nursery)
                try:
                    frames = sock.recv_multipart_nowait(copy=False)
                except trio.WouldBlock:
                    break

    def _accept(self, frames: list[Any], sock: ZmqSocket, nursery: trio.Nursery) -> None:
        try:
            message = parse_from_broker(frames)
        except WorkerProtocolError as exc:
            self._bad("ignored a bad message from the broker: %s", exc)
            return
        if isinstance(message, Heartbeat):
            return
        assert isinstance(message, Task)
        if self._in_flight == 0:
            self._idle = trio.Event()
        self._in_flight += 1
        nursery.start_soon(self._run_task, sock, message)

    async def _run_task(self, sock: ZmqSocket, task: Task) -> None:
        try:
            served = await self.engine.serve(task.request)
            event = b""
            if served.event is not None:
                event = encode_event(served.event, self.config.events_topic.encode())[1]
            done = encode_done(task.key, served.reply, event)
            if not sock.try_send_multipart(done):
                await sock.send_multipart(done)
            self.served += 1
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()


# -- process entry point (used by brokers that spawn local workers) ---------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run one worker actor in this process until SIGINT/SIGTERM."""
    from switchyard.runtime.config import build_config
    from switchyard.runtime.errors import ConfigError
    from switchyard.runtime.logs import configure_logging
    from switchyard.runtime.manifest import ActorSpec, AppSpec, SupervisorSpec
    from switchyard.runtime.supervisor import Restart, Strategy

    parser = argparse.ArgumentParser(prog="python -m switchyard.services.inference.worker")
    parser.add_argument("--config", required=True, help="JSON config file, or - for stdin")
    parser.add_argument("--name", default="inference_worker")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--parent-pid", type=int, default=0, help="stop (gracefully) when this process is no longer our parent"
    )
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        text = sys.stdin.read() if args.config == "-" else Path(args.config).read_text(encoding="utf-8")
        config = build_config(InferenceWorkerConfig, json_codec.decode(text.encode()), where=f"worker {args.name!r}")
    except (OSError, ValueError, ConfigError) as exc:
        print(f"inference_worker: {exc}", file=sys.stderr)
        return 2
    app = AppSpec(
        name=f"{args.name}-app",
        source="<inference_worker>",
        grace_period=5.0,
        root=SupervisorSpec(name=f"{args.name}-app", strategy=Strategy.ONE_FOR_ONE, max_restarts=3, within=10.0),
        supervisors=(),
        actors=(
            ActorSpec(
                name=args.name,
                kind="inference_worker",
                actor_class=InferenceWorkerActor,
                config=config,
                restart=Restart.PERMANENT,
                mailbox_capacity=None,
                supervisor=None,
            ),
        ),
    )
    trio.run(_run, app, args.parent_pid)
    return 0


async def _run(app: Any, parent_pid: int) -> None:
    from switchyard.runtime.cli import run_until_signalled

    async with trio.open_nursery() as nursery:
        if parent_pid:
            nursery.start_soon(_exit_with_parent, parent_pid, nursery.cancel_scope)
        await run_until_signalled(app)
        nursery.cancel_scope.cancel()


async def _exit_with_parent(parent_pid: int, scope: trio.CancelScope) -> None:
    """A broker's local worker must not outlive it (e.g. when the broker is SIGKILLed)."""
    while os.getppid() == parent_pid:  # noqa: ASYNC110 - nothing to wait on: polling the parent pid is the way
        await trio.sleep(0.5)
    logging.getLogger("switchyard.inference.worker").warning("parent %d is gone; stopping", parent_pid)
    scope.cancel()


if __name__ == "__main__":
    sys.exit(main())
