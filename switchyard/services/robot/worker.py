"""The robot worker actor: installs uploaded projects and runs them in a child process.

User code runs in a separate process (:mod:`switchyard.services.robot.child`): Python
cannot unload modules, so a new project, a crash or a runaway call is dealt with by
replacing the process. This actor owns that process (``trio.run_process`` inside the
actor's nursery: it cannot outlive the actor) and two ZeroMQ sockets:

* a REQ socket per process, bound at ``ipc://<ipc_dir>/cmd-<n>.sock``, for commands
  ``{command, data, params}`` answered ``{status, message, data}`` (REQ-REP);
* one SUB socket bound at ``ipc://<ipc_dir>/callbacks.sock`` for what user code
  pushes, ``{type: "callback", data: {event, data}}`` (PUB-SUB), forwarded as
  :class:`~switchyard.services.robot.messages.Push` to the actor named ``notify``.

Asked a :class:`~switchyard.services.robot.messages.RobotRequest`, it always answers an
ack dict ``{status, message, data}``:

* ``update``: ``payload["data"]`` (or ``payload["zip_data"]``): a base64 string (a
  ``data:...;base64,`` URL prefix is accepted) or bytes. The ZIP is validated and
  installed by :mod:`robot_project` (a rejected one leaves ``current`` untouched),
  then the process is restarted;
* ``start`` loads ``current/main.py``; ``process`` calls
  ``<object>.<method>(**args)`` from ``payload["params"]``, loading first if needed
  (and copying ``default/`` into an empty ``current/``); ``stop`` calls the project's
  ``stop()`` hooks (sent by the bridge when the client disconnects);
* a call running longer than ``max_execution_time`` gets the process killed and
  restarted and the caller an error; a process that dies during a call is restarted
  and the caller told, one that dies between calls is restarted and ``worker_crashed``
  is pushed.

Commands run one at a time, in mailbox order.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio
import zmq

from switchyard.protocols.codec import CodecError, json_codec
from switchyard.runtime import Actor, ActorNotFound, ActorStopped
from switchyard.services.robot import project as robot_project
from switchyard.services.robot.messages import COMMANDS, WORKER_CRASHED, Push, RobotRequest, ack
from switchyard.transports.zmq import SocketOptions, ZmqSocket, open_socket

__all__ = ["CHILD_SCRIPT", "RobotWorkerActor", "RobotWorkerConfig"]

CHILD_SCRIPT = str(Path(__file__).with_name("child.py"))


@attrs.frozen
class RobotWorkerConfig:
    storage_root: str = "storage"  # projects live in <storage_root>/projects
    max_execution_time: float = 300.0
    max_zip_bytes: int = 100 * 1024 * 1024
    max_zip_entries: int = 2000
    max_unpacked_bytes: int = 512 * 1024 * 1024
    max_compression_ratio: float = 200.0
    notify: str = "socketio_bridge"  # actor told Push messages ("" = nobody)
    python: str = ""  # interpreter for the worker process ("" = this one)
    ipc_dir: str = ""  # directory for the ipc:// sockets ("" = a private temp dir)
    start_timeout: float = 20.0
    stop_grace: float = 2.0  # SIGTERM -> SIGKILL when replacing the process


@attrs.define
class _Process:
    number: int
    process: trio.Process
    req: ZmqSocket
    endpoint: str
    exited: trio.Event = attrs.field(factory=trio.Event)
    expected_exit: bool = False  # we stopped it (update, timeout, shutdown)
    busy: bool = False  # a call is in flight
    died_in_call: bool = False  # it exited while busy: that caller reports it
    call_scope: trio.CancelScope | None = None  # cancelled if the process exits mid-call
    loaded: bool = False  # a start/process succeeded, so current/ was there


@attrs.frozen
class _Outcome:
    reply: dict[str, Any] | None = None
    timed_out: bool = False
    crashed: bool = False


class WorkerStartError(RuntimeError):
    pass


@asynccontextmanager
async def _private_dir() -> AsyncIterator[str]:
    path = tempfile.mkdtemp(prefix="sy-robot-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class RobotWorkerActor(Actor):
    """Runs uploaded robot projects (Python) in a supervised worker process over ZeroMQ IPC."""

    Config = RobotWorkerConfig
    mailbox_capacity = 64

    async def on_start(self) -> None:
        cfg = self.config
        self.projects = Path(cfg.storage_root).absolute() / "projects"
        self.limits = robot_project.ZipLimits(
            max_zip_bytes=cfg.max_zip_bytes,
            max_entries=cfg.max_zip_entries,
            max_total_bytes=cfg.max_unpacked_bytes,
            max_ratio=cfg.max_compression_ratio,
        )
        await trio.to_thread.run_sync(robot_project.ensure_layout, self.projects)
        if cfg.ipc_dir:
            os.makedirs(cfg.ipc_dir, exist_ok=True)
            self.ipc_dir = cfg.ipc_dir
        else:
            self.ipc_dir = await self.enter(_private_dir())
        self.pub_endpoint = f"ipc://{self.ipc_dir}/callbacks.sock"
        self._sub = await self.enter(
            open_socket(zmq.SUB, bind=self.pub_endpoint, options=SocketOptions(subscribe=(b"",), rcvhwm=10_000))
        )
        self._lock = trio.Lock()
        self._worker: _Process | None = None
        self._generation = 0
        self._missing_notify_logged = False
        #: Counters a test or health check may read.
        self.restarts = 0
        self.crashes = 0
        self.nursery.start_soon(self._callback_loop)
        async with self._lock:
            await self._spawn()
        self.log.info(
            "robot worker ready: projects in %s, process pid %d",
            self.projects,
            self._worker.process.pid if self._worker else -1,
        )

    async def handle(self, message: Any) -> Any:
        if not isinstance(message, RobotRequest):
            raise TypeError(f"robot worker takes RobotRequest messages, not {type(message).__name__}")
        command = message.command
        if command == "update":
            return await self._update(message.payload)
        if command in COMMANDS:
            return await self._forward(command, message.payload)
        return ack("error", f"unknown command {command!r} (known: {', '.join(COMMANDS)})")

    # -- update ------------------------------------------------------------------
    async def _update(self, payload: Any) -> dict[str, Any]:
        blob = None
        if isinstance(payload, dict):
            blob = payload.get("data", payload.get("zip_data"))
        if blob is None:
            return ack("error", "update needs the project ZIP in 'data' (or 'zip_data'), base64 encoded")
        if isinstance(blob, str):
            approx = len(blob) * 3 // 4
            if approx > self.limits.max_zip_bytes + 3:
                return ack(
                    "error", f"project rejected: ZIP is about {approx} bytes; the limit is {self.limits.max_zip_bytes}"
                )
            try:
                blob = await trio.to_thread.run_sync(_decode_base64, blob)
            except ValueError as exc:
                return ack("error", f"project rejected: {exc}")
        elif not isinstance(blob, (bytes, bytearray)):
            return ack("error", f"'data' must be a base64 string or binary, not {type(blob).__name__}")
        async with self._lock:
            try:
                result = await trio.to_thread.run_sync(
                    robot_project.install_zip, self.projects, bytes(blob), self.limits
                )
            except robot_project.ProjectRejected as exc:
                self.log.info("project upload rejected: %s", exc)
                return ack("error", f"project rejected: {exc}")
            except OSError as exc:
                self.log.error("project install failed: %s", exc)
                return ack("error", f"project could not be installed: {exc}")
            await self._replace_process("project updated")
        data = {
            "files": result.files,
            "bytes": result.total_bytes,
            "top_folder": result.prefix.rstrip("/"),
            "requirements_txt": result.has_requirements,
        }
        message = "Project updated; worker restarted"
        if result.has_requirements:
            message += " (requirements.txt is not installed by the server)"
        self.log.info("project installed: %d files, %d bytes", result.files, result.total_bytes)
        return ack("success", message, data)

    # -- start / process / stop -----------------------------------------------------
    async def _forward(self, command: str, payload: Any) -> dict[str, Any]:
        params: Any = {}
        data: Any = {}
        if isinstance(payload, dict):
            params = payload.get("params", {})
            data = {k: v for k, v in payload.items() if k != "params"}
        if command == "process" and not isinstance(params, dict):
            return ack("error", "process needs {params: {object, method, args}}")
        async with self._lock:
            if command != "stop" and not (self._worker is not None and self._worker.loaded):
                copied = await trio.to_thread.run_sync(robot_project.ensure_current, self.projects)
                if copied:
                    self.log.info("current/ was empty: copied the default project")
                    await self._replace_process("default project copied")
            if self._worker is None or self._worker.exited.is_set():
                await self._replace_process("the previous process is gone")
            worker = self._worker
            assert worker is not None
            outcome = await self._call(
                worker, {"command": command, "data": data, "params": params}, self.config.max_execution_time
            )
            if outcome.reply is not None:
                if command != "stop" and outcome.reply["status"] == "success":
                    worker.loaded = True
                return outcome.reply
            what = _describe_call(command, params)
            if outcome.timed_out:
                self.log.warning(
                    "%s exceeded max_execution_time (%g s): killing the worker process",
                    what,
                    self.config.max_execution_time,
                )
                await self._replace_process("max_execution_time exceeded")
                return ack(
                    "error",
                    f"{what} exceeded max_execution_time ({self.config.max_execution_time:g} s); "
                    "the worker process was killed and restarted (loaded state is lost)",
                    {"error_type": "TimeoutError"},
                )
            code = worker.process.returncode
            self.crashes += 1
            self.log.error("worker process crashed during %s (exit code %s); restarting", what, code)
            await self._replace_process("crashed")
            return ack(
                "error",
                f"the worker process crashed during {what} (exit code {code}); it was restarted (loaded state is lost)",
                {"error_type": "WorkerCrashed", "exit_code": code},
            )

    async def _call(self, worker: _Process, request: dict[str, Any], timeout: float) -> _Outcome:
        body = json_codec.encode(request)
        raw: bytes | None = None
        worker.busy = True
        try:
            with trio.move_on_after(timeout) as timer:
                with trio.CancelScope() as scope:
                    worker.call_scope = scope
                    if worker.exited.is_set():
                        scope.cancel()
                    try:
                        await worker.req.send(body)
                        raw = await worker.req.recv()
                    except trio.ClosedResourceError:
                        pass  # the process is gone and its socket closed with it
        finally:
            worker.call_scope = None
            worker.busy = False
        if raw is not None:
            try:
                reply = json_codec.decode(raw)
            except CodecError as exc:
                return _Outcome(ack("error", f"worker sent an unreadable reply: {exc}"))
            if not isinstance(reply, dict) or reply.get("status") not in ("success", "error"):
                return _Outcome(ack("error", "worker sent a reply without a status"))
            return _Outcome(ack(reply["status"], str(reply.get("message", "")), reply.get("data")))
        if worker.exited.is_set() or worker.req.closed:
            return _Outcome(crashed=True)
        return _Outcome(timed_out=timer.cancelled_caught)

    # -- the process --------------------------------------------------------------
    async def _spawn(self) -> None:
        """Start a worker process and wait until it answers (caller holds the lock)."""
        self._generation += 1
        number = self._generation
        endpoint = f"ipc://{self.ipc_dir}/cmd-{number}.sock"
        project = robot_project.current_project(self.projects)
        self._worker = await self.nursery.start(self._run_process, number, endpoint, project)

    async def _run_process(
        self, number: int, endpoint: str, project: Path, *, task_status: trio.TaskStatus[_Process]
    ) -> None:
        python = self.config.python or sys.executable
        argv = [python, "-P", CHILD_SCRIPT, endpoint, self.pub_endpoint, str(project)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        async with open_socket(zmq.REQ, bind=endpoint, options=SocketOptions(linger_ms=0)) as req:
            async with trio.open_nursery() as nursery:
                process = await nursery.start(
                    partial(trio.run_process, argv, check=False, stdin=subprocess.DEVNULL, cwd=str(project), env=env)
                )
                worker = _Process(number, process, req, endpoint)
                nursery.start_soon(_watch_exit, worker)
                outcome = await self._call(worker, {"command": "ping"}, self.config.start_timeout)
                if outcome.reply is None or outcome.reply["status"] != "success":
                    worker.expected_exit = True
                    process.kill()
                    why = "timed out" if outcome.timed_out else f"exited with code {process.returncode}"
                    raise WorkerStartError(
                        f"worker process {why} before answering (after {self.config.start_timeout:g} s at most)"
                    )
                self.log.debug("worker process %d (pid %d) ready for %s", number, process.pid, project)
                task_status.started(worker)
        _unlink_ipc(endpoint)
        if not worker.expected_exit and not worker.died_in_call:
            self.nursery.start_soon(self._after_crash, worker)

    async def _replace_process(self, why: str) -> None:
        """Stop the current process (SIGTERM, then SIGKILL) and start a new one."""
        worker, self._worker = self._worker, None
        if worker is not None and not worker.exited.is_set():
            worker.expected_exit = True
            worker.process.terminate()
            with trio.move_on_after(self.config.stop_grace):
                await worker.exited.wait()
            if not worker.exited.is_set():
                worker.process.kill()
                await worker.exited.wait()
        self.restarts += 1
        self.log.info("restarting the worker process (%s)", why)
        await self._spawn()

    async def _after_crash(self, worker: _Process) -> None:
        code = worker.process.returncode
        self.crashes += 1
        self.log.error(
            "worker process %d (pid %d) died (exit code %s); restarting", worker.number, worker.process.pid, code
        )
        await self._notify(
            Push(
                WORKER_CRASHED,
                ack(
                    "error",
                    f"the worker process died (exit code {code}) and was restarted; loaded state is lost",
                    {"exit_code": code},
                ),
            )
        )
        async with self._lock:
            if self._worker is worker:
                await self._replace_process("crashed between calls")

    # -- pushed events ----------------------------------------------------------------
    async def _callback_loop(self) -> None:
        while True:
            raw = await self._sub.recv()
            try:
                message = json_codec.decode(raw)
                inner = message["data"]
                event = inner["event"]
                if message.get("type") != "callback" or not isinstance(event, str):
                    raise ValueError("not a callback")
            except (CodecError, KeyError, TypeError, ValueError) as exc:
                self.log.warning("ignoring a malformed callback from the worker process: %s", exc)
                continue
            await self._notify(Push(event, inner.get("data")))

    async def _notify(self, push: Push) -> None:
        if not self.config.notify:
            self.log.debug("no notify target; %s event not delivered", push.event)
            return
        try:
            await self.system.lookup(self.config.notify).tell(push)
        except (ActorNotFound, ActorStopped) as exc:
            if not self._missing_notify_logged:
                self._missing_notify_logged = True
                self.log.warning("cannot deliver pushed events to %r: %s", self.config.notify, exc)


async def _watch_exit(worker: _Process) -> None:
    try:
        await worker.process.wait()
    finally:
        worker.died_in_call = worker.busy
        worker.exited.set()
        if worker.call_scope is not None:
            worker.call_scope.cancel()


def _unlink_ipc(endpoint: str) -> None:
    try:
        os.unlink(endpoint.removeprefix("ipc://"))
    except OSError:
        pass


def _decode_base64(text: str) -> bytes:
    if text.startswith("data:"):
        comma = text.find(",")
        if comma < 0 or ";base64" not in text[:comma]:
            raise ValueError("a data: URL must be base64 encoded")
        text = text[comma + 1 :]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("'data' is not valid base64") from None


def _describe_call(command: str, params: Any) -> str:
    if command == "process" and isinstance(params, dict):
        name = ".".join(str(p) for p in (params.get("object"), params.get("method")) if p)
        return f"process {name}()" if name else "process"
    return command
