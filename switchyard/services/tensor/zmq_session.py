"""Tensor sessions over ZeroMQ: the file session's commands, with tensors as frames.

A ROUTER socket serves DEALER clients (:class:`~switchyard.services.tensor.client.TensorSessionClient`,
or any ZeroMQ peer following :mod:`switchyard.services.tensor.protocol`). Each
request carries its tensors as a 64-byte TSR header frame plus the raw data frame;
they reach ``main_logic`` as numpy arrays viewing the received frames, and result
arrays go out as views of their memory: no copy either way.

The commands are those of a :class:`~switchyard.services.tensor.server.TensorSessionServer`:
the built-ins (``hello``, ``matmul``, ``add``) or the subclass named by the
``server`` config key, so the same server code serves files and sockets. ``exit`` is
acknowledged and ends nothing: the actor is a shared service, stopped by its system.

Config keys: ``endpoint`` (``ipc://`` or ``tcp://``; the parent directory of an
``ipc://`` path is created), ``server`` (``"module:Class"``, empty for the
built-ins), ``max_message_size`` (bytes per request, answered with an error above
it), ``max_tensors`` (per message), ``parallel`` (commands running at once; 1 keeps
a stateful subclass safe), ``request_timeout`` (seconds, 0 = none), ``sndhwm`` and
``rcvhwm``.

Inside a system, ``await ref.ask(TensorCommand("add", "a,b", {"a": x, "b": y}))``
runs a command without any socket and answers a :class:`TensorReply`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import trio

from switchyard.runtime import Actor
from switchyard.services.tensor.protocol import (
    MAX_TENSORS,
    Done,
    Request,
    Response,
    decode_request,
    encode_done,
    encode_response,
    error_status,
    request_id_of,
)
from switchyard.services.tensor.server import SessionError, load_server_class
from switchyard.transports.zmq_bridges import EndpointConfig, RouterStreamServer

__all__ = ["TensorCommand", "TensorReply", "TensorSessionActor", "TensorSessionConfig"]


@attrs.frozen
class TensorSessionConfig:
    endpoint: str = "ipc://run/tensor_session.sock"
    server: str = ""
    max_message_size: int = 1 << 28
    max_tensors: int = MAX_TENSORS
    parallel: int = 1
    request_timeout: float = 0.0
    sndhwm: int = 1000
    rcvhwm: int = 1000


@attrs.frozen
class TensorCommand:
    """An in-process request: ``cmd``, ``params`` and the tensors it names, by tag."""

    cmd: str
    params: str = ""
    tensors: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class TensorReply:
    """What a command produced: its responses in order and ``"ok"``/``"error:..."``."""

    status: str
    responses: tuple[Response, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class _FrameExchange:
    """A request's tensors held in memory; responses handed to ``send``.

    The latest response is held back until the command writes another one or ends,
    so the last one can carry the request's status: one message for the common
    one-response command, and no thread round trip for it.
    """

    def __init__(self, req_id: int, tensors: Sequence[tuple[str, np.ndarray]], send: Any) -> None:
        self.req_id = req_id
        self.inputs = dict(tensors)
        self.results: list[tuple[str, np.ndarray]] = []
        self.send = send
        self.held: Response | None = None

    def load(self, tag: str) -> np.ndarray:
        try:
            return self.inputs.pop(tag)
        except KeyError:
            raise SessionError(f"tensor {tag!r} not found (not sent with the request)") from None

    def store(self, tag: str, array: np.ndarray) -> None:
        self.results.append((tag, array))

    def discard(self, tag: str) -> None:
        self.inputs.pop(tag, None)

    def respond(self, cmd: str, text: str) -> None:
        results, self.results = self.results, []
        previous, self.held = self.held, Response(self.req_id, cmd, text, tuple(results))
        if previous is not None:
            trio.from_thread.run(self.send, previous)

    async def finish(self, status: str) -> None:
        """Send what is held with the final status (or a bare done)."""
        held, self.held = self.held, None
        if held is not None and status == "ok":
            await self.send(attrs.evolve(held, status=status))
            return
        if held is not None:
            await self.send(held)
        await self.send(Done(self.req_id, status))


class TensorSessionActor(Actor):
    """Tensor session commands (hello, matmul, add, or a subclass) over ZeroMQ, tensors as zero-copy TSR frames."""

    Config = TensorSessionConfig

    async def on_start(self) -> None:
        config = self.config
        self.handler = load_server_class(config.server)()
        self.handler.session_id = self.name
        self._limiter = trio.CapacityLimiter(max(1, config.parallel))
        if config.endpoint.startswith("ipc://"):
            Path(config.endpoint[len("ipc://") :]).parent.mkdir(parents=True, exist_ok=True)
        self.server = RouterStreamServer(
            EndpointConfig.from_config(config),
            self._serve,
            supersede=False,
            error_reply=self._error_reply,
            multipart=True,
            name=f"{self.name}.router",
            logger=self.log,
        )
        self.endpoint = await self.nursery.start(self.server.serve)
        self.log.info("tensor session serving on %s (%s)", self.endpoint, type(self.handler).__name__)

    async def on_stop(self) -> None:
        await self.server.drain()

    async def _serve(self, identity: bytes, frames: list[Any], send: Any) -> None:
        req_id, request, tensors = decode_request(frames, max_tensors=self.config.max_tensors)
        if request.cmd == "exit":
            await send(encode_done(req_id, "ok"))
            return

        async def send_reply(reply: Response | Done) -> None:
            if isinstance(reply, Done):
                await send(encode_done(reply.id, reply.status))
            else:
                await send(encode_response(reply.id, reply.cmd, reply.params, reply.tensors, reply.status))

        await self._execute(request, _FrameExchange(req_id, tensors, send_reply))

    async def _execute(self, request: Request, exchange: _FrameExchange) -> str:
        async with self._limiter:
            status = await self.handler.execute(request, exchange)
        await exchange.finish(status)
        return status

    @staticmethod
    def _error_reply(exc: BaseException, frames: Any) -> list[Any]:
        return encode_done(
            request_id_of(frames) if isinstance(frames, list) and frames else None,
            error_status(str(exc) or type(exc).__name__),
        )

    async def handle(self, message: Any) -> TensorReply:
        """Run a :class:`TensorCommand` in process (no socket); answer a TensorReply."""
        if not isinstance(message, TensorCommand):
            raise TypeError(f"expected a TensorCommand, got {type(message).__name__}")
        responses: list[Response] = []

        async def collect(reply: Response | Done) -> None:
            if isinstance(reply, Response):
                responses.append(attrs.evolve(reply, status=None))

        tensors = [(tag, np.asarray(value)) for tag, value in message.tensors.items()]
        status = await self._execute(Request(message.cmd, message.params), _FrameExchange(0, tensors, collect))
        return TensorReply(status, tuple(responses))
