"""The tensor-session server API: subclass :class:`TensorSessionServer`.

The same server object answers over files (:mod:`switchyard.services.tensor.file_session`,
what the C++ ``PythonSession`` drives) and over ZeroMQ
(:mod:`switchyard.services.tensor.zmq_session`). Subclass it the way the original
``TechRenaissanceServer`` was subclassed (that name is kept as an alias)::

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
  block. (The ZeroMQ actor runs a command inline instead while its recent runs took
  under ``inline_run_us``; see :mod:`switchyard.services.tensor.zmq_session`.) ``get_tensors``/``send_tensors``/``write_response`` work inside it only.
* A request that fails (``main_logic`` returns False, raises, or a tensor is missing
  or malformed) reports ``error:<message>`` (``error:Failed to process command <cmd>``
  for False); the server keeps serving.
* :meth:`TensorSessionServer.run` and :meth:`TensorSessionServer.serve` serve a
  session directory; the file transport is imported only when they are called.
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import os
import time
from collections.abc import Callable
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
    result_tags,
    split_tags,
)
from switchyard.services.tensor.tsr import DTYPE_CODES
from switchyard.services.tensor.tsr_file import DEFAULT_MMAP_THRESHOLD

__all__ = [
    "SessionBusyError",
    "SessionError",
    "TechRenaissanceServer",
    "TensorExchange",
    "TensorSessionServer",
    "load_server_class",
]

log = logging.getLogger("switchyard.tensor_session")


class SessionError(Exception):
    """A command cannot be carried out; the message becomes the ``error:`` status."""


class SessionBusyError(SessionError):
    """Another server process already serves this session directory."""


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

    async def execute(
        self,
        request: Request,
        exchange: TensorExchange,
        *,
        inline: bool = False,
        on_run: Callable[[float], None] | None = None,
    ) -> str:
        """Run ``main_logic`` for ``request`` in a worker thread; ``"ok"`` or ``"error:..."``.

        With ``inline=True`` it runs in the calling Trio task instead (the transport
        decided it is quick, and ``exchange.respond`` must then not block).
        ``on_run`` gets ``main_logic``'s own run time in seconds, measured where it
        ran (the thread hop is not in it), also when it raised.
        Exceptions from user code become the status; only cancellation propagates.
        """
        call = _Call(exchange)
        token = _CURRENT.set(call)
        try:
            if inline:
                ok = self._timed_main_logic(request, on_run)
            else:
                ok = await trio.to_thread.run_sync(self._timed_main_logic, request, on_run)
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

    def _timed_main_logic(self, request: Request, on_run: Callable[[float], None] | None) -> bool:
        if on_run is None:
            return self.main_logic(request.cmd, request.params)
        started = time.perf_counter()
        try:
            return self.main_logic(request.cmd, request.params)
        finally:
            on_run(time.perf_counter() - started)

    # ---- serving a session directory (the file transport)

    def run(self, session_id: str) -> int:
        """Serve ``<root>/tr_session_<session_id>`` until told to exit (blocking).

        Returns 0, or 3 when another server already holds the session.
        """
        from switchyard.services.tensor import file_session  # only the file transport needs it

        return file_session.run_session(self, str(session_id))

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
        from switchyard.services.tensor import file_session

        await file_session.serve_session(self, session_id, task_status=task_status)


TechRenaissanceServer = TensorSessionServer
"""The original base class name, for code moving over from ``tech_renaissance``."""


def load_server_class(spec: str) -> type[TensorSessionServer]:
    """The TensorSessionServer subclass named ``"module:Class"`` (the base class for ``""``)."""
    if not spec:
        return TensorSessionServer
    module_name, _, attr = spec.partition(":")
    cls = getattr(importlib.import_module(module_name), attr, None) if attr else None
    if not (isinstance(cls, type) and issubclass(cls, TensorSessionServer)):
        raise ValueError(f"{spec!r} is not a module:Class naming a TensorSessionServer subclass")
    return cls
