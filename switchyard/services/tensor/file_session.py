"""File-session server: a drop-in for Tech Renaissance's Python session server.

The C++ ``PythonSession`` makes ``<root>/tr_session_<id>/``, launches
``python3 <script> <id>`` and talks through files in that directory (see
``docs/tensor.md`` and :mod:`switchyard.services.tensor.protocol`). Subclass
:class:`TensorSessionServer` the way the original ``TechRenaissanceServer`` was
subclassed (that name is kept as an alias)::

    class MatrixServer(TensorSessionServer):
        def main_logic(self, command: str, parameters: str) -> bool:
            if command == "scale":
                x = self.get_tensors(parameters, 1)
                if x is None:
                    return False
                self.send_tensors(x * 2)
                return True
            return super().main_logic(command, parameters)   # hello, matmul, add

    if __name__ == "__main__":
        MatrixServer().run(sys.argv[1])

What callers may rely on:

* Tensors are numpy arrays (torch tensors are accepted by ``send_tensors``).
  Inputs at least ``mmap_threshold`` bytes big are memory-mapped copy-on-write.
* ``main_logic`` runs in a worker thread, one request at a time per session; it may
  block. ``get_tensors``/``send_tensors``/``write_response`` work inside it only.
* A request that fails (``main_logic`` returns False, raises, or a tensor is missing
  or malformed) gets no response and ``status.txt`` becomes ``error:<message>``
  (``error:Failed to process command <cmd>`` for False), as the C++ client expects;
  the server keeps serving and writes ``ready`` back after the next request that
  succeeds.
* ``request.json`` is removed once consumed: when the request's first response is
  published (so the client sees "ready" no later than the answer) or when the
  request ends. ``response.json`` is only written after the previous one is gone;
  both it and result tensors are written to a temporary name and renamed.
* The server exits on ``{"cmd": "exit"}``, ``exit`` in ``status.txt``, an
  ``exit.flag`` file, the session directory disappearing, or SIGINT/SIGTERM, and
  then writes ``terminated`` to ``status.txt``.
* A second server started on a session that already has one exits at once (code 3)
  without touching the session, so a client that re-``start()``\\ s keeps working.
"""

from __future__ import annotations

import argparse
import contextvars
import errno
import fcntl
import importlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Protocol

import attrs
import numpy as np
import trio

from switchyard.services.tensor.protocol import (
    Request,
    SessionProtocolError,
    error_status,
    failed_command_status,
    parse_request,
    render_response,
    result_tags,
    split_tags,
)
from switchyard.services.tensor.tsr import DTYPE_CODES
from switchyard.services.tensor.tsr_file import DEFAULT_MMAP_THRESHOLD, load_tsr, save_tsr
from switchyard.transports.file_watch import DirectoryWatcher, watch_directory

__all__ = [
    "ENV_ROOT",
    "SessionBusyError",
    "SessionError",
    "TechRenaissanceServer",
    "TensorExchange",
    "TensorSessionServer",
    "load_server_class",
    "main",
    "resolve_session_root",
    "session_dir",
]

log = logging.getLogger("switchyard.tensor_session")

#: Environment variable naming the directory that holds the ``tr_session_<id>`` folders.
ENV_ROOT = "SWITCHYARD_SESSION_ROOT"

REQUEST = "request.json"
RESPONSE = "response.json"
STATUS = "status.txt"
EXIT_FLAG = "exit.flag"
LOCK = ".switchyard.lock"
_WATCHED = (REQUEST, RESPONSE, STATUS, EXIT_FLAG)

#: How often a waiting server re-checks its files even without a file event.
RECHECK_INTERVAL = 1.0


class SessionError(Exception):
    """A command cannot be carried out; the message becomes the ``error:`` status."""


class SessionBusyError(SessionError):
    """Another server process already serves this session directory."""


# ------------------------------------------------------------------ the exchange


class TensorExchange(Protocol):
    """What one request's tensors and responses travel through (file or ZeroMQ).

    ``load``/``store``/``discard``/``respond`` are called from the worker thread
    that runs ``main_logic``. ``load`` raises SessionError (or FileNotFoundError /
    TSRError) for a tensor it cannot give.
    """

    def load(self, tag: str) -> np.ndarray: ...

    def store(self, tag: str, array: np.ndarray) -> None: ...

    def discard(self, tag: str) -> None: ...

    def respond(self, cmd: str, text: str) -> None: ...


@attrs.define
class _Call:
    exchange: TensorExchange
    error: str | None = None

    def fail(self, message: str) -> None:
        if self.error is None:  # the first, most specific failure wins
            self.error = message


_CURRENT: contextvars.ContextVar[_Call] = contextvars.ContextVar("switchyard_tensor_call")


def _current_call(verb: str) -> _Call:
    try:
        return _CURRENT.get()
    except LookupError:
        raise RuntimeError(f"{verb}() works only while a request is being handled (inside main_logic)") from None


def _as_numpy(tensor: Any) -> np.ndarray:
    if hasattr(tensor, "detach") and hasattr(tensor, "cpu"):  # a torch tensor
        tensor = tensor.detach().cpu().numpy()
    return np.asarray(tensor)


def _storable(array: np.ndarray) -> np.ndarray:
    """``array`` in a TSR dtype: float32 for other floats, int32 for other ints/bools."""
    if array.dtype in DTYPE_CODES.values():
        return array
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return array.astype(np.int32)
    raise SessionError(f"result dtype {array.dtype} cannot be sent as TSR")


# ------------------------------------------------------------------ the server


class TensorSessionServer:
    """Base class for session servers; override :meth:`main_logic`.

    The built-in commands are ``hello <name>``, ``matmul a,b``, ``add a,b`` (tensor
    results as ``r``) and ``exit``.
    """

    def __init__(
        self,
        debug: bool = False,
        *,
        root: str | os.PathLike[str] | None = None,
        use_inotify: bool = True,
        max_request_bytes: int = 1 << 20,
        max_tensor_bytes: int = 1 << 33,
        mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
    ) -> None:
        self.debug = debug
        self.root = Path(root) if root is not None else None
        self.use_inotify = use_inotify
        self.max_request_bytes = max_request_bytes
        self.max_tensor_bytes = max_tensor_bytes
        self.mmap_threshold = mmap_threshold
        self.session_id: str | None = None
        self.session_dir: Path | None = None

    # ---- the subclass API (same names and meaning as TechRenaissanceServer)

    def main_logic(self, command: str, parameters: str) -> bool:
        """Handle one command; return False if it is not yours (-> ``error:`` status)."""
        name = command.lower()
        if name == "hello":
            self.write_response("", f"Hello {parameters.title()}")
            return True
        if name in ("matmul", "add"):
            a, b = self.require_tensors(parameters, 2)
            try:
                result = np.matmul(a, b) if name == "matmul" else np.add(a, b)
            except ValueError as exc:
                raise SessionError(f"{name}: {exc}") from None
            self.send_tensors(_storable(result))
            return True
        return False

    def get_tensors(self, params: str, count: int | None = None) -> Any:
        """The tensors tagged in ``params``: one array if ``count`` is 1, else a tuple.

        As in the original, returns None when they cannot be loaded (wrong count,
        missing or malformed file); the reason becomes the request's ``error:``
        status. The input files are removed once loaded.
        """
        try:
            tensors = self.require_tensors(params, count)
        except SessionError as exc:
            _current_call("get_tensors").fail(str(exc))
            self.debug_message(f"[switchyard] get_tensors failed: {exc}")
            return None
        return tensors[0] if count == 1 else tensors

    def require_tensors(self, params: str, count: int | None = None) -> tuple[np.ndarray, ...]:
        """Like :meth:`get_tensors` but always a tuple, raising SessionError on failure."""
        call = _current_call("get_tensors")
        try:
            tags = split_tags(params)
        except SessionProtocolError as exc:
            raise SessionError(str(exc)) from None
        if count is not None and len(tags) != count:
            raise SessionError(f"expected {count} tensor tag(s) in {params!r}, got {len(tags)}")
        loaded = []
        try:
            for tag in tags:
                loaded.append(call.exchange.load(tag))
        except SessionError:
            self._discard(call, tags)
            raise
        except FileNotFoundError:
            self._discard(call, tags)
            raise SessionError(f"tensor {tag!r} not found ({tag}.tsr)") from None
        except ValueError as exc:  # TSRError and other malformed input
            self._discard(call, tags)
            raise SessionError(f"tensor {tag!r}: {exc}") from None
        return tuple(loaded)

    @staticmethod
    def _discard(call: _Call, tags: list[str]) -> None:
        for tag in tags:
            call.exchange.discard(tag)

    def send_tensors(self, *tensors: Any) -> None:
        """Send result tensors (``r``, or ``r0``, ``r1``, ...) and answer their tags,
        comma-separated, as one response."""
        if not tensors:
            raise ValueError("send_tensors() needs at least one tensor")
        call = _current_call("send_tensors")
        tags = result_tags(len(tensors))
        for tag, tensor in zip(tags, tensors, strict=False):
            call.exchange.store(tag, _storable(_as_numpy(tensor)))
        call.exchange.respond("", ",".join(tags))

    def write_response(self, command: str, parameters: str) -> None:
        """Publish one response (blocks until the client took the previous one)."""
        _current_call("write_response").exchange.respond(command, str(parameters))

    def debug_message(self, *args: Any) -> None:
        """Print when constructed with ``debug=True`` (as the original does)."""
        if self.debug:
            print(*args, flush=True)

    # ---- running one request (shared by the file and ZeroMQ transports)

    async def execute(self, request: Request, exchange: TensorExchange) -> str:
        """Run ``main_logic`` for ``request`` in a worker thread; ``"ok"`` or ``"error:..."``.

        Exceptions from user code become the status; only cancellation propagates.
        """
        call = _Call(exchange)
        token = _CURRENT.set(call)
        try:
            ok = await trio.to_thread.run_sync(self.main_logic, request.cmd, request.params)
        except Exception as exc:  # user code: report, keep serving
            call.fail(str(exc) or type(exc).__name__)
        else:
            if not ok:
                call.fail(failed_command_status(request.cmd).removeprefix("error:"))
        finally:
            _CURRENT.reset(token)
        if call.error is not None:
            log.warning("tensor session %s: command %r failed: %s", self.session_id, request.cmd, call.error)
            return error_status(call.error)
        return "ok"

    # ---- the file transport

    def run(self, session_id: str) -> int:
        """Serve ``<root>/tr_session_<session_id>`` until told to exit (blocking).

        Returns 0, or 3 when another server already holds the session.
        """
        return trio.run(self._run_main, str(session_id))

    async def _run_main(self, session_id: str) -> int:
        code = 0
        async with trio.open_nursery() as nursery:
            if threading.current_thread() is threading.main_thread():
                nursery.start_soon(_exit_on_signals, nursery.cancel_scope)
            try:
                await self.serve(session_id)
            except SessionBusyError as exc:
                log.warning("%s; exiting", exc)
                code = 3
            nursery.cancel_scope.cancel()
        return code

    async def serve(
        self,
        session_id: str,
        *,
        task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve one session directory until an exit request; usable in any Trio program.

        ``await nursery.start(server.serve, "42")`` returns the session directory once
        the server is watching it. Raises :class:`SessionBusyError` if another server
        holds the session.
        """
        directory = session_dir(self.root if self.root is not None else resolve_session_root(), session_id)
        directory.mkdir(parents=True, exist_ok=True)
        self.session_id, self.session_dir = session_id, directory
        with _SessionLock(directory):
            session = _FileSession(self, directory)
            try:
                await session.serve(task_status)
            finally:
                session.write_status("terminated", force=True)


TechRenaissanceServer = TensorSessionServer
"""The original base class name, for code moving over from ``tech_renaissance``."""


class _SessionLock:
    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK
        self.fd = -1

    def __enter__(self) -> _SessionLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SessionBusyError(f"another server already serves {self.path.parent}") from None
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the lock


class _FileExchange:
    """Tensors as ``<tag>.tsr`` files, responses as ``response.json``."""

    def __init__(self, session: _FileSession) -> None:
        self.session = session

    def _path(self, tag: str) -> Path:
        return self.session.dir / f"{tag}.tsr"

    def load(self, tag: str) -> np.ndarray:
        server = self.session.server
        return load_tsr(
            self._path(tag), unlink=True, mmap_threshold=server.mmap_threshold, max_size=server.max_tensor_bytes
        )

    def store(self, tag: str, array: np.ndarray) -> None:
        save_tsr(self._path(tag), array)

    def discard(self, tag: str) -> None:
        self._path(tag).unlink(missing_ok=True)

    def respond(self, cmd: str, text: str) -> None:
        trio.from_thread.run(self.session.publish_response, cmd, text)


class _FileSession:
    """The state of one served directory."""

    def __init__(self, server: TensorSessionServer, directory: Path) -> None:
        self.server = server
        self.dir = directory
        self.request = directory / REQUEST
        self.response = directory / RESPONSE
        self.status = directory / STATUS
        self.exit_flag = directory / EXIT_FLAG
        self.watcher: DirectoryWatcher | None = None
        self.scope: trio.CancelScope | None = None
        self.pending_inode: int | None = None  # request.json being handled, not yet removed
        self.unreadable_inode: int | None = None  # a request.json we could not read (reported once)
        self.in_error = False
        self.exiting = False

    # ---- status.txt

    def read_status(self) -> str:
        try:
            return self.status.read_text(encoding="utf-8", errors="replace").strip()
        except FileNotFoundError:
            return ""
        except OSError:
            return ""

    def write_status(self, text: str, *, force: bool = False) -> None:
        if not self.dir.is_dir():
            return  # the client removed the session: nobody to tell
        if not force and self.read_status() == "exit":
            return  # never overwrite the client's exit request
        try:
            _atomic_write(self.status, text.encode("utf-8"))
        except OSError as exc:  # disk full, directory vanishing: keep serving regardless
            log.warning("tensor session %s: cannot write status %r: %s", self.server.session_id, text, exc)

    def exit_requested(self) -> bool:
        return (
            self.exiting
            or self.exit_flag.exists()
            or self.read_status() == "exit"
            or (self.watcher is not None and self.watcher.gone)
        )

    # ---- the loop

    async def serve(self, task_status: trio.TaskStatus[Path]) -> None:
        if self.read_status() != "ready":
            self.write_status("running", force=True)  # as the original: clears a stale "exit"
        async with watch_directory(self.dir, _WATCHED, use_inotify=self.server.use_inotify) as watcher:
            self.watcher = watcher
            log.info("tensor session %s: serving %s (%s)", self.server.session_id, self.dir, watcher.kind)
            task_status.started(self.dir)
            with trio.CancelScope() as self.scope:
                while not self.exit_requested():
                    raw = self._read_request()
                    if raw is None:
                        await watcher.wait(RECHECK_INTERVAL)
                        continue
                    watcher.activity()
                    if not await self._handle(raw):
                        break

    def _read_request(self) -> bytes | None:
        """request.json's bytes (up to the limit + 1), or None if there is none to read."""
        try:
            fd = os.open(self.request, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self._unreadable(exc)
        try:
            inode = os.fstat(fd).st_ino
            if inode == self.unreadable_inode:
                return None  # reported already; wait for the client to replace it
            limit = self.server.max_request_bytes
            chunks, size = [], 0
            while size <= limit:
                chunk = os.read(fd, limit + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            self.pending_inode = inode
            return b"".join(chunks)
        except OSError as exc:  # e.g. request.json is a directory
            return self._unreadable(exc, inode)
        finally:
            os.close(fd)

    def _unreadable(self, exc: OSError, inode: int | None = None) -> None:
        if inode is None:
            try:
                inode = os.stat(self.request).st_ino
            except OSError:
                return None
        if inode != self.unreadable_inode:
            self.unreadable_inode = inode
            log.warning("tensor session %s: cannot read %s: %s", self.server.session_id, self.request, exc)
            self._record(error_status(f"cannot read {REQUEST}: {exc.strerror or exc}"))
        return None

    def consume_request(self) -> None:
        """Remove request.json if it still is the one being handled."""
        inode, self.pending_inode = self.pending_inode, None
        if inode is None:
            return
        try:
            if os.stat(self.request).st_ino == inode:
                os.unlink(self.request)
        except FileNotFoundError:
            pass

    async def _handle(self, raw: bytes) -> bool:
        """Handle one request; False when the server should exit."""
        server = self.server
        try:
            if len(raw) > server.max_request_bytes:
                raise SessionProtocolError(f"request over the {server.max_request_bytes}-byte limit")
            request = parse_request(raw)
        except SessionProtocolError as exc:
            log.warning("tensor session %s: bad request: %s", server.session_id, exc)
            self.consume_request()
            self._record(error_status(str(exc)))
            return True
        server.debug_message(f"[switchyard] command {request.cmd!r} params {request.params!r}")
        if request.cmd == "exit":
            self.consume_request()
            return False
        status = await server.execute(request, _FileExchange(self))
        self.consume_request()
        self._record(status)
        return True

    def _record(self, status: str) -> None:
        if status != "ok":
            self.write_status(status)
            self.in_error = True
        elif self.in_error:
            self.write_status("ready")
            self.in_error = False

    async def publish_response(self, cmd: str, text: str) -> None:
        """Write response.json once the previous one is gone (runs in the Trio thread)."""
        assert self.watcher is not None and self.scope is not None
        while self.response.exists():
            if self.exit_requested():
                self.exiting = True
                self.scope.cancel()  # unwinds main_logic's thread through this call
                await trio.lowlevel.checkpoint()
            await self.watcher.wait(RECHECK_INTERVAL)
        self.consume_request()
        if self.in_error:  # answering again: the status goes back before the answer shows
            self.write_status("ready")
            self.in_error = False
        _atomic_write(self.response, render_response(cmd, text), tmp_name="response.tmp")


def _atomic_write(path: Path, data: bytes, *, tmp_name: str | None = None) -> None:
    tmp = path.with_name(tmp_name or f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


async def _exit_on_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("signal %s: exiting", signum)
            scope.cancel()
            return


# ------------------------------------------------------------------ locating sessions


def session_dir(root: str | os.PathLike[str], session_id: str) -> Path:
    """``<root>/tr_session_<session_id>`` (the C++ client's naming)."""
    sid = str(session_id)
    if not sid or "/" in sid or "\\" in sid or sid in (".", ".."):
        raise ValueError(f"invalid session id {sid!r}")
    return Path(root) / f"tr_session_{sid}"


def resolve_session_root(explicit: str | os.PathLike[str] | None = None, script: str | None = None) -> Path:
    """Where the ``tr_session_<id>`` folders live, first match wins:

    1. ``explicit`` (``--root``), 2. ``$SWITCHYARD_SESSION_ROOT``, 3. for a script at
    ``<project>/python/module/<name>.py`` (where the original server lives),
    ``<project>/workspace/python_session`` as the original computes it,
    4. ``./workspace/python_session``.
    """
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_ROOT)
    if env:
        return Path(env)
    script_path = Path(script or sys.argv[0] or ".").resolve()
    if script_path.parent.name == "module" and script_path.parent.parent.name == "python":
        return script_path.parents[2] / "workspace" / "python_session"
    return Path.cwd() / "workspace" / "python_session"


def load_server_class(spec: str) -> type[TensorSessionServer]:
    """The TensorSessionServer subclass named ``"module:Class"`` (the base class for ``""``)."""
    if not spec:
        return TensorSessionServer
    module_name, _, attr = spec.partition(":")
    cls = getattr(importlib.import_module(module_name), attr, None) if attr else None
    if not (isinstance(cls, type) and issubclass(cls, TensorSessionServer)):
        raise ValueError(f"{spec!r} is not a module:Class naming a TensorSessionServer subclass")
    return cls


def main(argv: list[str] | None = None) -> int:
    """``switchyard-tensor-session <session_id> [--root DIR] [--server mod:Class]``.

    What the C++ client's ``python3 <script> <session_id>`` launch ends up calling.
    Exit codes: 0 served and exited, 3 another server holds the session.
    """
    parser = argparse.ArgumentParser(
        prog="switchyard-tensor-session",
        description="Serve a Tech Renaissance PythonSession directory (tr_session_<id>).",
    )
    parser.add_argument("session_id")
    parser.add_argument(
        "--root",
        help=f"directory holding tr_session_<id> (default: ${ENV_ROOT}, "
        "else <project>/workspace/python_session for a script in <project>/python/module/, "
        "else ./workspace/python_session)",
    )
    parser.add_argument("--server", help="module:Class of a TensorSessionServer subclass to run")
    parser.add_argument("--poll", action="store_true", help="poll instead of using inotify")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        cls = load_server_class(args.server or "")
    except (ImportError, ValueError) as exc:
        parser.error(f"--server: {exc}")
    server = cls(debug=args.debug, root=resolve_session_root(args.root), use_inotify=not args.poll)
    return server.run(args.session_id)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
