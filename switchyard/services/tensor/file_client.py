"""Client side of a file session, with the verbs of Tech Renaissance's C++ ``PythonSession``.

For tests and for Python callers that drive a session server (ours or the original)
the way the C++ program does::

    with PythonSession("default", "demo", root=tmp) as session:
        session.start()
        print(session.fetch_response("hello world"))          # "Hello World"
        r = session.calculate("matmul", np.ones((4, 3), np.float32), np.ones((3, 5), np.float32))

Differences from the C++ class, all deliberate: times are in seconds; failures
raise (``TimeoutError``, :class:`~switchyard.services.tensor.server.SessionError`
carrying the server's ``error:`` status) instead of returning ``""``; the client
polls every ``poll_interval`` seconds (``cpp_backoff=True`` restores the C++ 32 ms
to 1024 ms back-off); several result tags are supported (``wait_for_tensors``); the
server process is owned (``start`` launches it, ``close``/``terminate`` reap it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

import switchyard
from switchyard.services.tensor.file_session import (
    ENV_ROOT,
    EXIT_FLAG,
    REQUEST,
    RESPONSE,
    STATUS,
    session_dir,
)
from switchyard.services.tensor.protocol import render_request, response_text, split_tags
from switchyard.services.tensor.server import SessionError
from switchyard.services.tensor.tsr_file import load_tsr, save_tsr

__all__ = ["DEFAULT_SCRIPT", "PythonSession", "SessionVerbs"]

#: The server script shipped with switchyard (what ``script="default"`` launches).
DEFAULT_SCRIPT = Path(switchyard.__file__).resolve().parent / "apps" / "tensor_server.py"

_STATUS_CHECK_INTERVAL = 0.005


def _default_root() -> Path:
    env = os.environ.get(ENV_ROOT)
    return Path(env) if env else Path.cwd() / "workspace" / "python_session"


class SessionVerbs:
    """The C++ ``PythonSession`` verbs built on five primitives a transport provides:
    ``wait_until_ready``, ``send_request``, ``wait_for_response``, ``send_tensor``
    and ``wait_for_tensors``."""

    session_id: str

    def wait_until_ready(self, timeout: float = 5.0) -> bool:
        raise NotImplementedError

    def send_request(self, msg: str | Mapping[str, Any]) -> None:
        raise NotImplementedError

    def wait_for_response(self, timeout: float = 5.0) -> str:
        raise NotImplementedError

    def send_tensor(self, tensor: Any, tag: str) -> None:
        raise NotImplementedError

    def wait_for_tensors(self, timeout: float = 10.0) -> list[np.ndarray]:
        raise NotImplementedError

    def fetch_response(self, msg: str | Mapping[str, Any], timeout: float = 5.0) -> str:
        if not self.wait_until_ready(timeout):
            raise TimeoutError(f"session {self.session_id} still busy after {timeout} s")
        self.send_request(msg)
        return self.wait_for_response(timeout)

    def wait_for_tensor(self, timeout: float = 10.0) -> np.ndarray:
        tensors = self.wait_for_tensors(timeout)
        if len(tensors) != 1:
            raise SessionError(f"expected one result tensor, got {len(tensors)} (use wait_for_tensors)")
        return tensors[0]

    def fetch_tensors(self, msg: str | Mapping[str, Any], timeout: float = 10.0) -> list[np.ndarray]:
        if not self.wait_until_ready(timeout):
            raise TimeoutError(f"session {self.session_id} still busy after {timeout} s")
        self.send_request(msg)
        return self.wait_for_tensors(timeout)

    def fetch_tensor(self, msg: str | Mapping[str, Any], timeout: float = 10.0) -> np.ndarray:
        tensors = self.fetch_tensors(msg, timeout)
        if len(tensors) != 1:
            raise SessionError(f"expected one result tensor, got {len(tensors)} (use fetch_tensors)")
        return tensors[0]

    def calculate(self, cmd: str, *tensors: Any, timeout: float = 10.0) -> np.ndarray:
        """Send ``tensors`` as ``a``, ``b``, ``c``, ... and run ``cmd`` on them (one result)."""
        tags = [chr(ord("a") + i) for i in range(len(tensors))]
        for tag, tensor in zip(tags, tensors, strict=False):
            self.send_tensor(tensor, tag)
        return self.fetch_tensor({"cmd": cmd, "params": ",".join(tags)}, timeout)


class PythonSession(SessionVerbs):
    """One session directory and (after :meth:`start`) the server process serving it."""

    def __init__(
        self,
        script: str | os.PathLike[str] = "default",
        session_id: str = "default",
        *,
        root: str | os.PathLike[str] | None = None,
        python: str | None = None,
        server_args: tuple[str, ...] = (),
        poll_interval: float = 0.001,
        cpp_backoff: bool = False,
        cleanup: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.script = DEFAULT_SCRIPT if str(script) == "default" else Path(script)
        self.session_id = str(session_id)
        self.root = Path(root) if root is not None else _default_root()
        self.dir = session_dir(self.root, self.session_id)
        self.python = python or sys.executable
        self.server_args = tuple(server_args)
        self.poll_interval = poll_interval
        self.cpp_backoff = cpp_backoff
        self.cleanup = cleanup
        self.env = dict(env) if env is not None else None
        self.process: subprocess.Popen[bytes] | None = None
        self._status_stamp: tuple[int, int, int] | None = None
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in (REQUEST, RESPONSE):  # as the C++ constructor does
            (self.dir / stale).unlink(missing_ok=True)

    # ---- process management

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, warmup: float = 0.0) -> None:
        """Launch ``python <script> <session_id>`` and write ``ready`` to status.txt."""
        if self.running:
            return
        if not self.script.exists():
            raise FileNotFoundError(f"session server script not found: {self.script}")
        env = dict(os.environ if self.env is None else self.env)
        env[ENV_ROOT] = str(self.root)
        (self.dir / EXIT_FLAG).unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [self.python, str(self.script), self.session_id, *self.server_args],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        self._write_status("ready")
        if warmup:
            time.sleep(warmup)

    def is_alive(self) -> bool:
        """The server runs and its status is neither ``terminated`` nor ``error:...``."""
        if self.process is not None and self.process.poll() is not None:
            return False
        status = self.status()
        return not (status == "terminated" or status.startswith("error:"))

    def terminate(self, timeout: float = 2.0) -> None:
        """Write ``exit`` to status.txt; kill the process if it is still there after ``timeout``."""
        if self.dir.is_dir():
            self._write_status("exit")
        self._reap(timeout)

    def please_exit(self, timeout: float = 5.0, ensure: bool = True) -> None:
        """Send ``{"cmd": "exit"}`` once the server is ready; with ``ensure``, terminate
        if it is not ready or has not exited within ``timeout``."""
        if not self.wait_until_ready(timeout):
            if ensure:
                self.terminate()
            return
        self.send_request({"cmd": "exit"})
        if self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                if ensure:
                    self.terminate()

    def _reap(self, timeout: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        """Stop the server if it runs; remove the session directory if ``cleanup``."""
        if self.running:
            self.please_exit(timeout=2.0, ensure=True)
        self._reap(2.0)
        if self.cleanup and self.dir.is_dir():
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PythonSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- state

    def status(self) -> str:
        """The first line of status.txt (``""`` if there is none)."""
        try:
            return (self.dir / STATUS).read_text(encoding="utf-8", errors="replace").splitlines()[0].strip()
        except (FileNotFoundError, IndexError):
            return ""

    def is_ready(self) -> bool:
        return not (self.dir / REQUEST).exists()

    def is_busy(self) -> bool:
        return (self.dir / REQUEST).exists()

    def new_response(self) -> bool:
        return (self.dir / RESPONSE).exists()

    def wait_until_ready(self, timeout: float = 5.0) -> bool:
        """Wait until request.json is gone; False on timeout (0 waits forever, as in C++)."""
        return self._poll(self.is_ready, timeout, check_status=False)

    # ---- text

    def send_request(self, msg: str | Mapping[str, Any]) -> None:
        """Write a request (tmp file, then rename). A str goes as is (JSON or plain
        ``"<cmd> <params>"``); a mapping is JSON-encoded."""
        body = render_request(msg)
        self._status_stamp = self._stamp()
        tmp = self.dir / "request.tmp"
        tmp.write_bytes(body)
        os.replace(tmp, self.dir / REQUEST)

    def wait_for_response(self, timeout: float = 5.0) -> str:
        """The next response's text; it is removed so the server can write the next one."""
        response = self.dir / RESPONSE
        if not self._poll(response.exists, timeout, check_status=True):
            raise TimeoutError(f"no response in {self.dir} after {timeout} s (status {self.status()!r})")
        body = response.read_bytes()
        response.unlink(missing_ok=True)
        return response_text(body)

    # ---- tensors

    def send_tensor(self, tensor: Any, tag: str) -> None:
        """Write ``<tag>.tsr`` into the session directory."""
        save_tsr(self.dir / f"{tag}.tsr", np.asarray(tensor))

    def wait_for_tensors(self, timeout: float = 10.0) -> list[np.ndarray]:
        """Wait for a response naming result tags and load each ``<tag>.tsr``."""
        deadline = time.monotonic() + timeout
        tags = split_tags(self.wait_for_response(timeout))
        if not tags:
            raise SessionError("the response names no tensor")
        out = []
        for tag in tags:
            path = self.dir / f"{tag}.tsr"
            ready = lambda p=path: p.exists() and p.stat().st_size > 0  # noqa: E731
            if not self._poll(ready, max(deadline - time.monotonic(), 1e-3), check_status=False):
                raise TimeoutError(f"tensor file {path} did not appear")
            out.append(load_tsr(path))
        return out

    # ---- internals

    def _write_status(self, text: str) -> None:
        (self.dir / STATUS).write_text(text, encoding="utf-8")

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.dir / STATUS)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _check_status(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise SessionError(f"server process exited with code {self.process.returncode} (status {self.status()!r})")
        if self._stamp() != self._status_stamp:
            status = self.status()
            if status.startswith("error:"):
                self._status_stamp = self._stamp()
                raise SessionError(status)

    def _poll(self, predicate: Callable[[], bool], timeout: float, *, check_status: bool) -> bool:
        deadline = None if timeout == 0 else time.monotonic() + timeout
        interval = 0.032 if self.cpp_backoff else self.poll_interval
        count = 0
        next_check = time.monotonic() + _STATUS_CHECK_INTERVAL
        while True:
            if predicate():
                return True
            now = time.monotonic()
            if check_status and now >= next_check:
                self._check_status()
                next_check = now + _STATUS_CHECK_INTERVAL
            if deadline is not None and now >= deadline:
                return False
            time.sleep(interval)
            if self.cpp_backoff:  # the C++ client's back-off: x2 every 8 polls, up to 32 x 32 ms
                level = count // 8
                if level >= 5:
                    interval = 0.032 * 32
                else:
                    interval = 0.032 * (1 << level)
                    count += 1
