"""The robot worker's child process: loads the user's project and runs its calls.

Started by :mod:`switchyard.services.robot.worker` as a separate program
(``python -s -P -u child.py CMD_ENDPOINT PUB_ENDPOINT PROJECT_DIR [LIMITS_JSON]``),
usually inside the sandbox that :mod:`switchyard.services.robot.sandbox` sets up,
never imported by it: user modules cannot be unloaded, so a new project means a new
process. It imports only the standard library and pyzmq, so it starts fast and user
code sees nothing of switchyard.

Before it connects or loads anything it applies ``LIMITS_JSON``
(``{"AS": bytes, "NPROC": n, "NOFILE": n, "FSIZE": bytes, "CPU": s}``) as hard
rlimits, which user code cannot raise again, and sets ``no_new_privs``.

Wire protocol (JSON frames, UTF-8):

* commands, on a REP socket connected to the parent's REQ:
  ``{"command": "ping"|"start"|"process"|"stop", "data": {...}, "params": {...}}``,
  each answered ``{"status": "success"|"error", "message": str, "data": ...}``;
* pushed events, on an XPUB socket connected to the parent's SUB:
  ``{"type": "callback", "data": {"event": str, "data": ...}}``. The child waits for
  the parent's subscription before serving, so no early push is lost, and the socket
  does not drop when the parent is slow (``XPUB_NODROP``): ``push_message`` then
  blocks up to ``PUSH_TIMEOUT`` seconds and returns ``False`` if it still cannot queue.

The child exits by itself (``os._exit``, user threads or not) when its parent dies,
checked every second between commands, so a killed server leaves no orphan behind.

``push_message(event, data)`` is injected into ``main`` before it runs and again
after (so a ``push_message = None`` placeholder in the user's module is replaced),
and into the project's other modules that define ``push_message = None``.
"""

from __future__ import annotations

import base64
import ctypes
import dataclasses
import importlib.util
import inspect
import json
import math
import os
import signal
import sys
import threading
import traceback
import types
from typing import Any

import zmq

PUSH_TIMEOUT = 5.0
SUBSCRIBE_TIMEOUT = 10.0
PARENT_CHECK_MS = 1000
RESERVED_EVENTS = frozenset(
    {"callback", "connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)


def to_json_safe(value: Any, _depth: int = 0) -> Any:
    """``value`` as JSON data: containers converted, bytes base64, unknown objects as str."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if _depth > 64:
        return repr(value)
    if isinstance(value, dict):
        return {str(k): to_json_safe(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json_safe(v, _depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json_safe(dataclasses.asdict(value), _depth + 1)
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        try:
            return to_json_safe(tolist(), _depth + 1)
        except Exception:
            pass
    return str(value)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _ok(message: str, data: Any = None) -> dict[str, Any]:
    return {"status": "success", "message": message, "data": data}


def _error(message: str, data: Any = None) -> dict[str, Any]:
    return {"status": "error", "message": message, "data": data}


class Paths:
    """Paths as the project's author should see them: project-relative, never the host's.

    A file of the project is shown relative to its root (``main.py``, ``lib/x.py``),
    one of the interpreter as ``<python>/lib/...``, any other as ``<host>/<name>``.
    """

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/") + "/"
        prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
        self.python = sorted({p.rstrip("/") + "/" for p in prefixes if p}, key=len, reverse=True)

    def file(self, filename: str) -> str:
        if filename.startswith(self.root):
            return filename[len(self.root) :]
        for prefix in self.python:
            if filename.startswith(prefix):
                return "<python>/" + filename[len(prefix) :]
        if filename.startswith("<") or not os.path.isabs(filename):
            return filename
        return "<host>/" + os.path.basename(filename)

    def text(self, text: str) -> str:
        text = text.replace(self.root, "")
        for prefix in self.python:
            text = text.replace(prefix, "<python>/")
        return text


def _exception_reply(exc: BaseException, doing: str, paths: Paths) -> dict[str, Any]:
    return _error(
        paths.text(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__),
        {"error_type": type(exc).__name__, "during": doing, "traceback": _user_traceback(exc, paths)},
    )


def _user_traceback(exc: BaseException, paths: Paths) -> str:
    """The traceback without this file's frames, paths shown by ``paths``."""
    summary = traceback.TracebackException.from_exception(exc)
    frames = [frame for frame in summary.stack if frame.filename != __file__][-20:]
    summary.stack = traceback.StackSummary.from_list(
        [traceback.FrameSummary(paths.file(f.filename), f.lineno, f.name, line=f.line) for f in frames]
    )
    return paths.text("".join(summary.format()))


class Pusher:
    """``push_message(event, data) -> bool``; thread-safe."""

    def __init__(self, sock: zmq.Socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self.dropped = 0

    def __call__(self, event: str, data: Any = None) -> bool:
        if not isinstance(event, str) or not event:
            raise ValueError("push_message: the event name must be a non-empty string")
        if event in RESERVED_EVENTS:
            raise ValueError(f"push_message: {event!r} is a reserved event name")
        body = _dumps({"type": "callback", "data": {"event": event, "data": to_json_safe(data)}})
        with self._lock:
            try:
                self._sock.send(body)
            except zmq.Again:
                self.dropped += 1
                print(
                    f"[robot worker] push_message({event!r}) dropped: the server did not take it "
                    f"within {PUSH_TIMEOUT:g} s ({self.dropped} dropped so far)",
                    file=sys.stderr,
                    flush=True,
                )
                return False
        return True


class Project:
    """The user's project, loaded at most once per process."""

    def __init__(self, root: str, push: Pusher) -> None:
        self.root = os.path.realpath(root)
        self.paths = Paths(self.root)
        self.push = push
        self.module: types.ModuleType | None = None

    def load(self) -> bool:
        """Import ``main.py`` (True) unless already loaded (False)."""
        if self.module is not None:
            return False
        path = os.path.join(self.root, "main.py")
        if not os.path.isfile(path):
            raise FileNotFoundError("the project has no main.py")
        if self.root not in sys.path:
            sys.path.insert(0, self.root)
        spec = importlib.util.spec_from_file_location("main", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        module.push_message = self.push  # type: ignore[attr-defined]
        sys.modules["main"] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop("main", None)
            raise
        self.module = module
        self._inject()
        return True

    def _project_modules(self) -> list[types.ModuleType]:
        prefix = self.root + os.sep
        found = []
        for module in list(sys.modules.values()):
            file = getattr(module, "__file__", None)
            if file and os.path.realpath(file).startswith(prefix):
                found.append(module)
        return found

    def _inject(self) -> None:
        assert self.module is not None
        self.module.push_message = self.push  # type: ignore[attr-defined]
        for module in self._project_modules():
            if getattr(module, "push_message", self.push) is None:
                module.push_message = self.push  # type: ignore[attr-defined]

    def describe(self) -> dict[str, Any]:
        assert self.module is not None
        objects, functions = [], []
        for name, value in vars(self.module).items():
            if name.startswith("_") or name == "push_message":
                continue
            if inspect.isfunction(value) and value.__module__ == "main":
                functions.append(name)
            elif self._is_context_object(value):
                objects.append(name)
        return {"project": "current", "objects": objects, "functions": functions}

    def _is_context_object(self, value: Any) -> bool:
        if inspect.ismodule(value) or inspect.isclass(value) or inspect.isroutine(value):
            return False
        names = {m.__name__ for m in self._project_modules()}
        return type(value).__module__ in names

    def call(self, params: Any) -> Any:
        if not isinstance(params, dict):
            raise TypeError("params must be an object {object, method, args}")
        obj_name, method, args = params.get("object"), params.get("method"), params.get("args")
        if args is None:
            args = {}
        if not isinstance(method, str) or not method:
            if isinstance(obj_name, str) and obj_name and not method:
                obj_name, method = None, obj_name  # {"object": "<function>"} calls a module-level function
            else:
                raise TypeError("params.method must be a non-empty string")
        assert self.module is not None
        target: Any = self.module
        for name in ([obj_name] if obj_name else []) + [method]:
            if not isinstance(name, str) or name.startswith("_"):
                raise AttributeError(f"{name!r} is not a public name")
            if not hasattr(target, name):
                where = "main" if target is self.module else obj_name
                raise AttributeError(f"{where} has no attribute {name!r}")
            target = getattr(target, name)
        if not callable(target):
            raise TypeError(f"{obj_name + '.' if obj_name else ''}{method} is not callable")
        if isinstance(args, dict):
            return target(**args)
        if isinstance(args, list):
            return target(*args)
        raise TypeError("params.args must be an object (keyword arguments) or a list (positional)")

    def stop(self) -> dict[str, Any]:
        """Call ``stop()`` on each context object, then the module-level ``stop()``."""
        if self.module is None:
            return {"stopped": [], "errors": [], "loaded": False}
        stopped: list[str] = []
        errors: list[dict[str, str]] = []
        for name, value in list(vars(self.module).items()):
            if name.startswith("_") or not self._is_context_object(value):
                continue
            stop = getattr(value, "stop", None)
            if callable(stop):
                self._run_stop(f"{name}.stop()", stop, stopped, errors)
        module_stop = vars(self.module).get("stop")
        if inspect.isfunction(module_stop):
            self._run_stop("stop()", module_stop, stopped, errors)
        return {"stopped": stopped, "errors": errors, "loaded": True}

    @staticmethod
    def _run_stop(label: str, fn: Any, stopped: list[str], errors: list[dict[str, str]]) -> None:
        try:
            fn()
            stopped.append(label)
        except Exception as exc:
            errors.append({"call": label, "error": f"{type(exc).__name__}: {exc}"})

    def scrub(self, report: dict[str, Any]) -> dict[str, Any]:
        for error in report["errors"]:
            error["error"] = self.paths.text(error["error"])
        return report


def dispatch(project: Project, request: Any) -> dict[str, Any]:
    if not isinstance(request, dict) or not isinstance(request.get("command"), str):
        return _error("a command is an object with a string 'command'")
    command = request["command"]
    if command == "ping":
        return _ok("pong", {"pid": os.getpid(), "loaded": project.module is not None})
    if command in ("start", "process"):
        try:
            loaded = project.load()
        except BaseException as exc:  # SystemExit from user code is a failed load, not our exit
            return _exception_reply(exc, "loading main.py", project.paths)
        if command == "start":
            message = "Project started" if loaded else "Project already loaded"
            return _ok(message, project.describe())
        params = request.get("params") or {}
        try:
            result = project.call(params)
        except BaseException as exc:
            return _exception_reply(exc, "process", project.paths)
        label = ".".join(str(p) for p in (params.get("object"), params.get("method")) if p)
        return _ok(f"{label} executed", to_json_safe(result))
    if command == "stop":
        report = project.scrub(project.stop())
        message = "nothing loaded" if not report["loaded"] else f"stopped: {', '.join(report['stopped']) or 'none'}"
        return (_ok if not report["errors"] else _error)(message, report)
    return _error(f"unknown command {command!r} (known: ping, start, process, stop)")


_PR_SET_NO_NEW_PRIVS = 38


def confine(limits: dict[str, int]) -> None:
    """Apply ``limits`` as hard rlimits (capped at the inherited hard limit) and set no_new_privs."""
    import resource

    for name, value in limits.items():
        which = getattr(resource, f"RLIMIT_{name}")
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the rlimits still hold


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print("usage: child.py CMD_ENDPOINT PUB_ENDPOINT PROJECT_DIR [LIMITS_JSON]", file=sys.stderr)
        return 2
    cmd_endpoint, pub_endpoint, root = argv[:3]
    confine(json.loads(argv[3]) if len(argv) == 4 else {})
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.XPUB_NODROP, 1)
    pub.setsockopt(zmq.SNDHWM, 10_000)
    pub.setsockopt(zmq.SNDTIMEO, int(PUSH_TIMEOUT * 1000))
    pub.setsockopt(zmq.LINGER, 2000)
    pub.connect(pub_endpoint)
    if not pub.poll(int(SUBSCRIBE_TIMEOUT * 1000), zmq.POLLIN):
        print("[robot worker] no subscriber on the callback channel; exiting", file=sys.stderr)
        return 3
    pub.recv()  # the parent's subscription
    rep = ctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    rep.connect(cmd_endpoint)
    project = Project(root, Pusher(pub))
    parent = os.getppid()
    while True:
        # Wake up now and then: if the parent died without stopping us, go too.
        while not rep.poll(PARENT_CHECK_MS, zmq.POLLIN):
            if os.getppid() != parent:
                os._exit(4)
        raw = rep.recv()
        try:
            request = json.loads(raw)
        except ValueError as exc:
            reply = _error(f"invalid JSON command: {exc}")
        else:
            reply = dispatch(project, request)
        try:
            body = _dumps(reply)
        except (TypeError, ValueError) as exc:
            body = _dumps(_error(f"result is not JSON-serializable: {exc}"))
        rep.send(body)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
