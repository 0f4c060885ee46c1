"""The robot worker actor: installs uploaded projects and runs them in a child process.

User code runs in a separate process (:mod:`switchyard.services.robot.child`): Python
cannot unload modules, so a new project, a crash or a runaway call is dealt with by
replacing the process. This actor owns that process (``trio.run_process`` inside the
actor's nursery: it cannot outlive the actor) and two ZeroMQ sockets:

User code is confined by :mod:`switchyard.services.robot.sandbox` (bubblewrap when
present, an unprivileged uid when the server is root, resource limits, a clean
environment); the config keys below say how. The process's output is read through
pipes and copied to the server's stdout/stderr: user code never holds the server's
own descriptors.

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

Commands run one at a time, in mailbox order. A request told with a
:class:`~switchyard.services.robot.messages.Reply` gets the same ack through it (see
:mod:`~switchyard.services.robot.messages`), so a caller can queue the next command
before the previous one is answered. Error acks never carry the server's
absolute paths: the child shows project-relative ones and the actor replaces the
storage and socket directories in whatever else reaches it.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Literal

import attrs
import trio
import zmq

from switchyard.protocols.codec import CodecError, json_codec
from switchyard.runtime import Actor, ActorNotFound, ActorStopped
from switchyard.services.robot import project as robot_project
from switchyard.services.robot import sandbox as robot_sandbox
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
    # confinement of user code (docs/robot.md, "Security model")
    sandbox: Literal["auto", "required", "off"] = "auto"
    network: bool = True
    user: str = "nobody"  # the uid user code runs as when the server is root
    groups: tuple[str, ...] = ()  # its supplementary groups (e.g. "dialout")
    max_memory_bytes: int = 2 * 1024**3
    max_processes: int = 256
    max_open_files: int = 1024
    max_file_bytes: int = 1024**3
    max_cpu_seconds: int = 0
    max_tmp_bytes: int = 256 * 1024**2
    env: dict[str, str] = attrs.field(factory=dict)
    pass_env: tuple[str, ...] = ()
    ro_paths: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()

    def sandbox_settings(self) -> robot_sandbox.SandboxSettings:
        return robot_sandbox.SandboxSettings(
            mode=self.sandbox,
            network=self.network,
            user=self.user,
            groups=self.groups,
            limits=robot_sandbox.Limits(
                memory_bytes=self.max_memory_bytes,
                processes=self.max_processes,
                open_files=self.max_open_files,
                file_bytes=self.max_file_bytes,
                cpu_seconds=self.max_cpu_seconds,
                tmp_bytes=self.max_tmp_bytes,
            ),
            env=dict(self.env),
            pass_env=self.pass_env,
            ro_paths=self.ro_paths,
            devices=self.devices,
        )


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
    output: trio.CancelScope = attrs.field(factory=trio.CancelScope)  # the pumps of its stdout/stderr


@attrs.frozen
class _Outcome:
    reply: dict[str, Any] | None = None
    timed_out: bool = False
    crashed: bool = False


class WorkerStartError(RuntimeError):
    pass


OUTPUT_DRAIN = 1.0  # seconds the output pumps get after the process exited


@asynccontextmanager
async def _lifeline() -> AsyncIterator[int]:
    """A pipe's read end for the children; its write end stays open as long as we run."""
    read, write = os.pipe2(os.O_CLOEXEC)
    try:
        yield read
    finally:
        os.close(write)
        os.close(read)


@asynccontextmanager
async def _private_dir() -> AsyncIterator[str]:
    path = tempfile.mkdtemp(prefix="sy-robot-")  # 0700
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
            os.makedirs(cfg.ipc_dir, mode=0o700, exist_ok=True)
            self.ipc_dir = os.path.abspath(cfg.ipc_dir)
        else:
            self.ipc_dir = await self.enter(_private_dir())
        self.sandbox = await robot_sandbox.prepare(
            cfg.sandbox_settings(),
            python=cfg.python or sys.executable,
            child_script=CHILD_SCRIPT,
            storage_root=self.projects.parent,
            ipc_dir=self.ipc_dir,
        )
        if self.sandbox.warning:
            self.log.warning("%s", self.sandbox.warning)
        self._lifeline = await self.enter(_lifeline())
        await trio.to_thread.run_sync(self._open_paths)
        self._scrubs = sorted(
            {
                (str(self.projects), "projects"),
                (str(self.projects.resolve()), "projects"),
                (str(self.projects.parent), "<storage>"),
                (str(self.projects.parent.resolve()), "<storage>"),
                (self.ipc_dir, "<ipc>"),
            },
            key=lambda pair: len(pair[0]),
            reverse=True,
        )
        self.pub_endpoint = f"ipc://{self.ipc_dir}/callbacks.sock"
        self._sub = await self.enter(
            open_socket(zmq.SUB, bind=self.pub_endpoint, options=SocketOptions(subscribe=(b"",), rcvhwm=10_000))
        )
        self.sandbox.prepare_socket(self.pub_endpoint.removeprefix("ipc://"))
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
            "robot worker ready: projects in %s, process pid %d, %s",
            self.projects,
            self._worker.process.pid if self._worker else -1,
            self._describe_confinement(),
        )

    def _open_paths(self) -> None:
        self.sandbox.prepare_dir(self.ipc_dir)
        self.sandbox.open_storage(self.projects.parent, self.projects, self.projects / ".releases")

    def _describe_confinement(self) -> str:
        box = self.sandbox
        who = f"uid {box.identity.uid}" if box.identity is not None else f"uid {os.geteuid()} (no drop)"
        where = "bubblewrap" if box.uses_bwrap else "no filesystem confinement"
        net = "network on" if box.settings.network else "network off"
        return f"user code under {where}, as {who}, {net}"

    def _scrub(self, text: str) -> str:
        """``text`` without the server's absolute storage and socket paths."""
        for path, label in self._scrubs:
            text = text.replace(path, label)
        return text

    async def handle(self, message: Any) -> Any:
        if not isinstance(message, RobotRequest):
            raise TypeError(f"robot worker takes RobotRequest messages, not {type(message).__name__}")
        reply = message.reply_to
        if reply is None:
            return await self._serve(message)
        if reply.abandoned:
            return None  # nobody waits for it any more: not run
        try:
            result = await self._serve(message)
        except Exception as exc:
            reply.resolve(ack("error", f"the robot worker failed: {exc}"))
            raise
        except BaseException:
            reply.resolve(ack("error", "the robot worker stopped while handling the request"))
            raise
        reply.resolve(result)
        return result

    async def _serve(self, message: RobotRequest) -> dict[str, Any]:
        command = message.command
        if command == "update":
            return await self._update(message.payload)
        if command in COMMANDS:
            return await self._forward(command, message.payload)
        return ack("error", f"unknown command {command!r} (known: {', '.join(COMMANDS)})")

    # -- update ------------------------------------------------------------------
    async def _update(self, payload: Any) -> dict[str, Any]:
        blob: Any = None
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
                data = await trio.to_thread.run_sync(_decode_base64, blob)
            except ValueError as exc:
                return ack("error", f"project rejected: {exc}")
        elif isinstance(blob, (bytes, bytearray)):
            data = bytes(blob)
        else:
            return ack("error", f"'data' must be a base64 string or binary, not {type(blob).__name__}")
        async with self._lock:
            try:
                result = await trio.to_thread.run_sync(robot_project.install_zip, self.projects, data, self.limits)
            except robot_project.ProjectRejected as exc:
                self.log.info("project upload rejected: %s", exc)
                return ack("error", f"project rejected: {exc}")
            except OSError as exc:
                self.log.error("project install failed: %s", exc)
                return ack("error", self._scrub(f"project could not be installed: {exc}"))
            await self._replace_process("project updated")
        info = {
            "files": result.files,
            "bytes": result.total_bytes,
            "top_folder": result.prefix.rstrip("/"),
            "requirements_txt": result.has_requirements,
        }
        message = "Project updated; worker restarted"
        if result.has_requirements:
            message += " (requirements.txt is not installed by the server)"
        self.log.info("project installed: %d files, %d bytes", result.files, result.total_bytes)
        return ack("success", message, info)

    # -- start / process / stop -----------------------------------------------------
    async def _forward(self, command: str, payload: Any) -> dict[str, Any]:
        params: Any = {}
        data: Any = {}
        if isinstance(payload, dict):
            params = payload.get("params", {})
            data = {k: v for k, v in payload.items() if k != "params"}
        if command == "process" and not isinstance(params, dict):
            return ack("error", "process needs {params: {object, method, args}}")
        # A free lock is taken without a checkpoint (the call below always waits):
        # one scheduler pass less per command.
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()
        try:
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
        finally:
            self._lock.release()

    async def _call(self, worker: _Process, request: dict[str, Any], timeout: float) -> _Outcome:
        body = json_codec.encode(request)
        raw: bytes | None = None
        worker.busy = True
        # One scope for both ends of a call: the deadline, and _watch_exit cancelling it
        # when the process exits (told apart below by worker.exited).
        with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
            worker.call_scope = scope
            if worker.exited.is_set():
                scope.cancel()
            try:
                # REQ is lockstep and the receive always waits (a checkpoint), so a send
                # that can go now goes without one of its own
                if not worker.req.try_send_multipart((body,)):
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
            message, data = str(reply.get("message", "")), reply.get("data")
            if reply["status"] == "error":
                message = self._scrub(message)
                if isinstance(data, dict) and isinstance(data.get("traceback"), str):
                    data = {**data, "traceback": self._scrub(data["traceback"])}
            return _Outcome(ack(reply["status"], message, data))
        if worker.exited.is_set() or worker.req.closed:
            return _Outcome(crashed=True)
        return _Outcome(timed_out=scope.cancelled_caught)

    # -- the process --------------------------------------------------------------
    async def _spawn(self) -> None:
        """Start a worker process and wait until it answers (caller holds the lock)."""
        self._generation += 1
        number = self._generation
        endpoint = f"ipc://{self.ipc_dir}/cmd-{number}.sock"
        project = robot_project.current_project(self.projects)
        await trio.to_thread.run_sync(self.sandbox.prepare_project, project)
        uid = self.sandbox.identity.uid if self.sandbox.identity is not None else os.getuid()
        existing = await trio.to_thread.run_sync(robot_sandbox.count_tasks, uid) if uid != 0 else 0
        launch = self.sandbox.launch(
            project=project,
            ipc_dir=self.ipc_dir,
            cmd_name=f"cmd-{number}.sock",
            pub_name="callbacks.sock",
            rlimits=self.sandbox.settings.limits.rlimits(existing),
            lifeline=self._lifeline,
        )
        self._worker = await self.nursery.start(self._run_process, number, endpoint, launch)

    async def _run_process(
        self, number: int, endpoint: str, launch: robot_sandbox.Launch, *, task_status: trio.TaskStatus[_Process]
    ) -> None:
        async with open_socket(zmq.REQ, bind=endpoint, options=SocketOptions(linger_ms=0)) as req:
            self.sandbox.prepare_socket(endpoint.removeprefix("ipc://"))
            async with trio.open_nursery() as nursery:
                process: trio.Process = await nursery.start(
                    partial(
                        trio.run_process,
                        launch.argv,
                        check=False,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        cwd=launch.cwd,
                        env=launch.env,
                        deliver_cancel=self._deliver_cancel,
                        **launch.options,
                    )
                )
                worker = _Process(number, process, req, endpoint)
                nursery.start_soon(self._pump_output, worker)
                nursery.start_soon(self._watch_exit, worker)
                outcome = await self._call(worker, {"command": "ping"}, self.config.start_timeout)
                if outcome.reply is None or outcome.reply["status"] != "success":
                    worker.expected_exit = True
                    self.sandbox.signal(process, signal.SIGKILL)
                    why = "timed out" if outcome.timed_out else f"exited with code {process.returncode}"
                    raise WorkerStartError(
                        f"worker process {why} before answering (after {self.config.start_timeout:g} s at most)"
                    )
                self.log.debug("worker process %d (pid %d) ready", number, process.pid)
                task_status.started(worker)
        _unlink_ipc(endpoint)
        if not worker.expected_exit and not worker.died_in_call:
            self.nursery.start_soon(self._after_crash, worker)

    async def _deliver_cancel(self, process: trio.Process) -> None:
        """On shutdown: SIGTERM to everything the child started, SIGKILL after ``stop_grace``."""
        self.sandbox.signal(process, signal.SIGTERM)
        await trio.sleep(self.config.stop_grace)
        self.sandbox.signal(process, signal.SIGKILL)

    async def _watch_exit(self, worker: _Process) -> None:
        try:
            await worker.process.wait()
        finally:
            self.sandbox.sweep(worker.process)
            worker.died_in_call = worker.busy
            worker.exited.set()
            if worker.call_scope is not None:
                worker.call_scope.cancel()
            # A descendant that escaped the sweep may hold the pipes open: let the
            # pumps drain what was written, then stop them.
            worker.output.deadline = trio.current_time() + OUTPUT_DRAIN

    async def _pump_output(self, worker: _Process) -> None:
        process = worker.process
        with worker.output:
            async with trio.open_nursery() as nursery:
                for stream, name in ((process.stdout, "stdout"), (process.stderr, "stderr")):
                    if stream is not None:
                        nursery.start_soon(_copy_output, stream, name)

    async def _replace_process(self, why: str) -> None:
        """Stop the current process (SIGTERM, then SIGKILL) and start a new one."""
        worker, self._worker = self._worker, None
        if worker is not None and not worker.exited.is_set():
            worker.expected_exit = True
            self.sandbox.signal(worker.process, signal.SIGTERM)
            with trio.move_on_after(self.config.stop_grace):
                await worker.exited.wait()
            if not worker.exited.is_set():
                self.sandbox.signal(worker.process, signal.SIGKILL)
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


async def _copy_output(stream: trio.abc.ReceiveStream, name: str) -> None:
    """Copy what the process writes to the server's ``sys.stdout``/``sys.stderr``."""
    async with stream:
        async for chunk in stream:
            await trio.to_thread.run_sync(_write_out, name, bytes(chunk))


def _write_out(name: str, chunk: bytes) -> None:
    out = getattr(sys, name)
    buffer = getattr(out, "buffer", None)
    try:
        if buffer is not None:
            buffer.write(chunk)
            buffer.flush()
        else:
            out.write(chunk.decode("utf-8", "replace"))
            out.flush()
    except (OSError, ValueError):
        pass  # the server's own stream is closed: the output has nowhere to go


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
