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
``ipc://`` path is created owner-only and the socket file removed at exit), ``server`` (``"module:Class"``, empty for the
built-ins), ``max_message_size`` (bytes per request, answered with an error above
it), ``max_tensors`` (per message), ``parallel`` (commands running at once; 1 keeps
a stateful subclass safe), ``request_timeout`` (seconds, 0 = none), ``sndhwm`` and
``rcvhwm``, ``inline_run_us`` (default 200).

``main_logic`` runs in a worker thread, except for a command whose recent runs took
under ``inline_run_us``: that one runs in the event loop, because a thread hop costs
more than such a run, above all on a loaded host. An inline run cannot be cut short
by ``request_timeout``; a command that once runs ``SLOW_FACTOR`` times over the bound
inline goes back to threads for good, so a command that blocks stalls the loop once
at most.

Inside a system, ``await ref.ask(TensorCommand("add", "a,b", {"a": x, "b": y}))``
runs a command without any socket and answers a :class:`TensorReply`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs
import numpy as np
import trio
import zmq

from switchyard.runtime import Actor
from switchyard.runtime.config import endpoint as valid_endpoint
from switchyard.runtime.stats import timed
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
from switchyard.transports.zmq_bridges import LIMIT_KEYS_MOVED, EndpointConfig, EndpointLimits, RouterStreamServer

__all__ = ["TensorCommand", "TensorReply", "TensorSessionActor", "TensorSessionConfig"]


@attrs.frozen
class TensorSessionConfig:
    """``[actor.config]`` of a ``tensor_session`` actor."""

    renamed_keys: ClassVar[dict[str, str]] = LIMIT_KEYS_MOVED

    endpoint: str = attrs.field(default="ipc://run/tensor_session.sock", validator=valid_endpoint)
    #: Limits (``[actor.config.limits]``): 256 MiB requests (tensors).
    limits: EndpointLimits = attrs.field(factory=lambda: EndpointLimits(max_message_size=1 << 28))
    server: str = ""
    max_tensors: int = MAX_TENSORS
    parallel: int = 1
    #: A command whose recent runs of ``main_logic`` took under this many microseconds
    #: runs in the event loop instead of a worker thread (0 = always a thread); a
    #: command that once ran over ``SLOW_FACTOR`` times this bound inline never
    #: runs inline again.
    inline_run_us: float = 200.0


#: An inline run this many times over ``inline_run_us`` bars its command from inline runs.
SLOW_FACTOR = 10

#: Result data at least this big that is exactly a received frame's memory goes back
#: as that ``zmq.Frame`` (smaller frames pyzmq copies anyway).
REUSE_MIN_BYTES = 1 << 16


def _address(buffer: Any) -> int:
    return int(np.frombuffer(buffer, np.uint8).__array_interface__["data"][0])


class _ReceivedFrames:
    """A request's large data frames, by (address, size) of their memory.

    A result that is an input tensor, or a whole view of one (``echo``, a reshape),
    would go out as a memoryview: pyzmq's zero-copy send of a Python buffer frees
    it through its garbage-collector thread, which takes the GIL and frees the
    megabytes the request arrived in while this thread waits for it (~60-120 us a
    MiB here). Sending the received ``zmq.Frame`` instead shares libzmq's message
    (a reference count, freed by libzmq without the GIL): same bytes, no copy.
    """

    __slots__ = ("frames",)

    def __init__(self, frames: Sequence[Any]) -> None:
        self.frames: dict[tuple[int, int], Any] = {}
        for frame in frames[2::2]:  # [header json, tsr header, data, tsr header, data, ...]
            if isinstance(frame, zmq.Frame):
                buffer = frame.buffer
                if buffer.nbytes >= REUSE_MIN_BYTES:
                    self.frames[(_address(buffer), buffer.nbytes)] = frame

    def reuse(self, out: list[Any]) -> list[Any]:
        """``out`` (a response's frames) with data views of a received frame replaced by that frame."""
        if self.frames:
            for i in range(2, len(out), 2):
                data = out[i]
                if isinstance(data, memoryview) and data.nbytes >= REUSE_MIN_BYTES:
                    frame = self.frames.get((_address(data), data.nbytes))
                    if frame is not None:
                        out[i] = frame
        return out


@attrs.define
class _CommandTimes:
    """Per-command run times of ``main_logic`` (an EWMA), owned by the actor's tasks."""

    bound: float
    ewma: dict[str, float] = attrs.Factory(dict)
    barred: set[str] = attrs.Factory(set)

    def inline(self, cmd: str) -> bool:
        if self.bound <= 0 or cmd in self.barred:
            return False
        took = self.ewma.get(cmd)
        return took is not None and took < self.bound

    def record(self, cmd: str, took: float, inline: bool) -> None:
        if inline and took > SLOW_FACTOR * self.bound:
            self.barred.add(cmd)
        if len(self.ewma) >= 1024 and cmd not in self.ewma:
            return  # bounded: unknown commands beyond this many always take a thread
        old = self.ewma.get(cmd)
        self.ewma[cmd] = took if old is None else 0.8 * old + 0.2 * took


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
    one-response command, and no thread round trip for it. When the command runs
    inline (in the Trio thread) earlier responses wait in ``queued`` until it ends.
    """

    def __init__(self, req_id: int, tensors: Sequence[tuple[str, np.ndarray]], send: Any) -> None:
        self.req_id = req_id
        self.inputs = dict(tensors)
        self.results: list[tuple[str, np.ndarray]] = []
        self.send = send
        self.held: Response | None = None
        self.inline = False
        self.queued: list[Response] = []

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
            if self.inline:
                self.queued.append(previous)
            else:
                trio.from_thread.run(self.send, previous)

    async def finish(self, status: str) -> None:
        """Send what is held with the final status (or a bare done)."""
        queued, self.queued = self.queued, []
        for response in queued:
            await self.send(response)
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
        self._times = _CommandTimes(max(0.0, config.inline_run_us) / 1e6)
        self.server = RouterStreamServer(
            EndpointConfig.from_config(config),
            timed(self._serve, self.system.metrics.request_observer(self.name, "zmq_router")),
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

        received = _ReceivedFrames(frames) if tensors else None

        async def send_reply(reply: Response | Done) -> None:
            if isinstance(reply, Done):
                await send(encode_done(reply.id, reply.status))
                return
            out = encode_response(reply.id, reply.cmd, reply.params, reply.tensors, reply.status)
            await send(received.reuse(out) if received is not None and reply.tensors else out)

        await self._execute(request, _FrameExchange(req_id, tensors, send_reply))

    async def _execute(self, request: Request, exchange: _FrameExchange) -> str:
        try:  # a free slot is taken without a scheduler trip, so a quick command never blocks
            self._limiter.acquire_nowait()
        except trio.WouldBlock:
            await self._limiter.acquire()
        try:
            inline = exchange.inline = self._times.inline(request.cmd)
            took: list[float] = []
            # main_logic's own time decides: a thread hop would count its own cost
            # (0.1-0.5 ms, more on a loaded host) and keep a quick command off the loop.
            status = await self.handler.execute(request, exchange, inline=inline, on_run=took.append)
            if took:
                self._times.record(request.cmd, took[0], inline)
        finally:
            self._limiter.release()
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
