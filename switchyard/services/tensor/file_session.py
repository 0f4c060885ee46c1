"""The file transport of a tensor session: Tech Renaissance's ``PythonSession`` directory.

The C++ ``PythonSession`` makes ``<root>/tr_session_<id>/``, launches
``python3 <script> <id>`` and talks through files in that directory (see
``docs/tensor.md`` and :mod:`switchyard.services.tensor.protocol`). This module serves
such a directory for a :class:`~switchyard.services.tensor.server.TensorSessionServer`
(whose ``run``/``serve`` call :func:`run_session`/:func:`serve_session`). The
server API's names (``TensorSessionServer``, ``SessionError``, ...) are importable
from here too.

What callers may rely on:

* A request that fails gets no response and ``status.txt`` becomes
  ``error:<message>``, as the C++ client expects; the server keeps serving and
  writes ``ready`` back after the next request that succeeds.
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

import errno
import fcntl
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import trio

from switchyard.services.tensor.protocol import (
    SessionProtocolError,
    error_status,
    parse_request,
    render_response,
)
from switchyard.services.tensor.server import SessionBusyError as SessionBusyError
from switchyard.services.tensor.server import SessionError as SessionError
from switchyard.services.tensor.server import TechRenaissanceServer as TechRenaissanceServer
from switchyard.services.tensor.server import TensorSessionServer as TensorSessionServer
from switchyard.services.tensor.server import load_server_class as load_server_class
from switchyard.services.tensor.tsr_file import load_tsr, remove_files, save_tsr
from switchyard.transports.file_watch import DirectoryWatcher, watch_directory

__all__ = [
    "ENV_ROOT",
    "EXIT_FLAG",
    "REQUEST",
    "RESPONSE",
    "STATUS",
    "resolve_session_root",
    "run_session",
    "serve_session",
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


def run_session(server: TensorSessionServer, session_id: str) -> int:
    """Serve ``server``'s session ``session_id`` until told to exit (blocking, own Trio run).

    Returns 0, or 3 when another server already holds the session.
    """
    return trio.run(_run_main, server, str(session_id))


async def _run_main(server: TensorSessionServer, session_id: str) -> int:
    code = 0
    async with trio.open_nursery() as nursery:
        if threading.current_thread() is threading.main_thread():
            nursery.start_soon(_exit_on_signals, nursery.cancel_scope)
        try:
            await serve_session(server, session_id)
        except SessionBusyError as exc:
            log.warning("%s; exiting", exc)
            code = 3
        nursery.cancel_scope.cancel()
    return code


async def serve_session(
    server: TensorSessionServer,
    session_id: str,
    *,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve one session directory for ``server`` until an exit request.

    ``task_status.started`` gets the session directory once it is watched. Raises
    :class:`SessionBusyError` if another server holds the session.
    """
    directory = session_dir(server.root if server.root is not None else resolve_session_root(), session_id)
    directory.mkdir(parents=True, exist_ok=True)
    server.session_id, server.session_dir = session_id, directory
    with _SessionLock(directory):
        # Results a crashed server had set aside (save_tsr(old=...)) and not removed.
        remove_files(list(directory.glob(".*.tsr.*.old")))
        session = _FileSession(server, directory)
        try:
            await session.serve(task_status)
        finally:
            session.write_status("terminated", force=True)


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
        #: Replaced result files, set aside to be removed once the request is answered.
        self.old: list[Path] = []

    def _path(self, tag: str) -> Path:
        return self.session.dir / f"{tag}.tsr"

    def load(self, tag: str) -> np.ndarray:
        server = self.session.server
        return load_tsr(
            self._path(tag), unlink=True, mmap_threshold=server.mmap_threshold, max_size=server.max_tensor_bytes
        )

    def store(self, tag: str, array: np.ndarray) -> None:
        save_tsr(self._path(tag), array, old=self.old)

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
            self._unreadable(exc)
            return None
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
            self._unreadable(exc, inode)
            return None
        finally:
            os.close(fd)

    def _unreadable(self, exc: OSError, inode: int | None = None) -> None:
        if inode is None:
            try:
                inode = os.stat(self.request).st_ino
            except OSError:
                return
        if inode != self.unreadable_inode:
            self.unreadable_inode = inode
            log.warning("tensor session %s: cannot read %s: %s", self.server.session_id, self.request, exc)
            self._record(error_status(f"cannot read {REQUEST}: {exc.strerror or exc}"))

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
        exchange = _FileExchange(self)
        try:
            status = await server.execute(request, exchange)
        finally:
            if exchange.old:  # the answer is out: free the old results while the client reads
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(remove_files, exchange.old)
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


if __name__ == "__main__":  # pragma: no cover
    from switchyard.services.tensor.cli import main

    sys.exit(main())
