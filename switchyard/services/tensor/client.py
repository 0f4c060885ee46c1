"""Client of the ZeroMQ tensor session, with the same verbs as the file-session client.

A blocking pyzmq DEALER socket, for scripts, tests and benchmarks (from Trio code,
call it through ``trio.to_thread.run_sync`` or talk to the actor with
``ref.ask(TensorCommand(...))``)::

    with TensorSessionClient("ipc://run/tensor_session.sock") as session:
        session.start()
        print(session.fetch_response("hello world"))               # "Hello World"
        r = session.calculate("matmul", a, b)

``send_tensor`` keeps the tensor and sends it with the next request (a TSR header
frame plus its data, zero-copy); result tensors arrive with the response that names
them, as arrays viewing the received frames. Times are in seconds; failures raise
``TimeoutError`` or :class:`~switchyard.services.tensor.server.SessionError`
(carrying the server's ``error:`` status).
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import zmq

from switchyard.services.tensor.file_client import SessionVerbs
from switchyard.services.tensor.protocol import (
    Done,
    Response,
    SessionProtocolError,
    decode_reply,
    encode_request,
    parse_request,
    split_tags,
)
from switchyard.services.tensor.server import SessionError
from switchyard.services.tensor.tsr import TSRError

__all__ = ["TensorSessionClient"]


class TensorSessionClient(SessionVerbs):
    """One DEALER connection to a tensor session actor."""

    def __init__(
        self, endpoint: str, *, session_id: str = "zmq", context: zmq.Context | None = None, linger_ms: int = 0
    ) -> None:
        self.endpoint = endpoint
        self.session_id = session_id
        self._context = context or zmq.Context.instance()
        self._linger_ms = linger_ms
        self.socket: zmq.Socket | None = None
        self._ids = itertools.count(1)
        self._outstanding: set[int] = set()
        self._responses: deque[Response] = deque()
        self._errors: deque[str] = deque()  # error statuses not yet reported to the caller
        self._pending: list[tuple[str, np.ndarray]] = []
        self._rcvtimeo = -1  # the socket's RCVTIMEO (ms) as last set

    # ---- connection

    def start(self) -> None:
        """Connect (ZeroMQ connects lazily: the server may come up later)."""
        if self.socket is not None:
            return
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, self._linger_ms)
        sock.connect(self.endpoint)
        self.socket = sock
        self._rcvtimeo = -1

    def is_alive(self) -> bool:
        return self.socket is not None and not self.socket.closed

    def terminate(self, timeout: float = 0.0) -> None:
        """Close the connection; replies still on their way are dropped."""
        if self.socket is not None:
            self.socket.close(linger=int(timeout * 1000))
            self.socket = None
        self._outstanding.clear()
        self._responses.clear()
        self._errors.clear()

    def please_exit(self, timeout: float = 5.0, ensure: bool = True) -> None:
        """Finish outstanding requests, send ``exit`` (acknowledged, ends nothing server-side), close."""
        if self.socket is not None and self.wait_until_ready(timeout):
            self.send_request({"cmd": "exit"})
            self.wait_until_ready(timeout)
        if ensure or not self._outstanding:
            self.terminate()

    def close(self) -> None:
        self.terminate()

    def __enter__(self) -> TensorSessionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- state

    def is_busy(self) -> bool:
        return self._drain(0.0) or bool(self._outstanding)

    def is_ready(self) -> bool:
        return not self.is_busy()

    def new_response(self) -> bool:
        self._drain(0.0)
        return bool(self._responses)

    def wait_until_ready(self, timeout: float = 5.0) -> bool:
        """Wait until every request sent has finished (its ``done`` arrived)."""
        deadline = time.monotonic() + timeout
        while self._outstanding:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._receive(remaining):
                return not self._outstanding
        return True

    # ---- requests

    def send_tensor(self, tensor: Any, tag: str) -> None:
        """Attach ``tensor`` (as ``tag``) to the next request."""
        self._pending.append((tag, np.asarray(tensor)))

    def send_request(self, msg: str | Mapping[str, Any]) -> None:
        """Send a command (JSON text, plain ``"<cmd> <params>"`` or a mapping) with
        the tensors attached since the last request."""
        if isinstance(msg, str):
            request = parse_request(msg.encode("utf-8"))
            cmd, params = request.cmd, request.params
        else:
            cmd, params = str(msg["cmd"]), str(msg.get("params", ""))
        sock = self._sock()
        req_id = next(self._ids)
        tensors, self._pending = self._pending, []
        sock.send_multipart(encode_request(req_id, cmd, params, tensors), copy=False)
        self._outstanding.add(req_id)

    def wait_for_response(self, timeout: float = 5.0) -> str:
        return self._next_response(timeout).params

    def wait_for_tensors(self, timeout: float = 10.0) -> list[np.ndarray]:
        response = self._next_response(timeout)
        by_tag = dict(response.tensors)
        tags = split_tags(response.params)
        missing = [tag for tag in tags if tag not in by_tag]
        if not tags or missing:
            raise SessionError(f"response {response.params!r} does not carry its tensors")
        return [by_tag[tag] for tag in tags]

    # ---- internals

    def _sock(self) -> zmq.Socket:
        if self.socket is None:
            raise SessionError("not connected: call start() first")
        return self.socket

    def _next_response(self, timeout: float) -> Response:
        """The next response in arrival order; a failed request raises its status."""
        deadline = time.monotonic() + timeout
        while True:
            if self._responses:
                return self._responses.popleft()
            if self._errors:
                raise SessionError(self._errors.popleft())
            if not self._outstanding:
                raise SessionError("no response is coming: every request sent has finished")
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._receive(remaining):
                raise TimeoutError(f"no response from {self.endpoint} after {timeout} s")

    def _drain(self, timeout: float) -> bool:
        got = False
        while self._receive(timeout):
            got, timeout = True, 0.0
        return got

    def _receive(self, timeout: float) -> bool:
        """Take one message if one comes within ``timeout``; False otherwise."""
        sock = self._sock()
        # A receive with a timeout (RCVTIMEO) rather than poll() then receive: pyzmq
        # builds a Poller for every poll(), tens of microseconds per message.
        try:
            if timeout > 0:
                ms = math.ceil(timeout * 1000)
                if ms != self._rcvtimeo:
                    sock.setsockopt(zmq.RCVTIMEO, ms)
                    self._rcvtimeo = ms
                frames = sock.recv_multipart(copy=False)
            else:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        try:
            reply = decode_reply(frames)
        except (SessionProtocolError, TSRError) as exc:
            raise SessionError(f"malformed reply from {self.endpoint}: {exc}") from None
        if isinstance(reply, Response):
            if reply.id in self._outstanding:  # else: a request we gave up on
                self._responses.append(reply)
                if reply.status is not None:  # the request's last message
                    self._outstanding.discard(reply.id)
                    if reply.status != "ok":
                        self._errors.append(reply.status)
            return True
        assert isinstance(reply, Done)
        if reply.id is None:  # a request too malformed to carry its id: the oldest one
            reply = Done(min(self._outstanding, default=None), reply.status)
        if reply.id in self._outstanding:
            self._outstanding.discard(reply.id)
            if not reply.ok:
                self._errors.append(reply.status)
        return True
