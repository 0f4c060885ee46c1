"""Trio-native ZeroMQ sockets.

:func:`open_socket` gives a :class:`ZmqSocket` owned by ``async with``; any number of
Trio tasks may send and receive on it at once. Sends are serialised per socket and
so are receives, so multipart messages never interleave.

Why our own adapter: pyzmq's ``zmq.FD`` is *edge-triggered*, and every ``send``,
``recv`` or read of ``zmq.EVENTS`` may consume the edge. So:

* a send is first tried with ``NOBLOCK``; a receive first reads ``EVENTS`` (a
  failed ``recv`` raises ``zmq.Again``, which costs several times an ``EVENTS``
  read); only when the socket is not ready does a task wait;
* one task at a time (the *fd waiter*) waits on the file descriptor with
  ``trio.lowlevel.wait_readable``; a task needing the other direction parks on an
  event keyed by the flag it needs (``POLLIN``/``POLLOUT``);
* after any operation or ``EVENTS`` read by another task, ``EVENTS`` is checked
  for the fd waiter's flag and, if it is set, the fd waiter is *poked* (woken with
  ``trio.lowlevel.notify_closing``, which wakes a waiter at the cost of an exception
  only when it happens, where a cancel scope around every wait costs on every
  wait), because that read may have consumed the edge it was waiting for (if
  the flag is not set, the next change of state raises a fresh edge); the fd
  waiter then re-reads ``EVENTS``, wakes only parked tasks whose flag is now set
  (no livelock), and goes back to waiting if its own is not;
* when the fd waiter leaves, every parked task is woken so one takes its place.

Closing calls ``trio.lowlevel.notify_closing`` so waiters get
``ClosedResourceError`` instead of hanging.

zmq-anyio (PyPI) solves the same problem through AnyIO with a poller thread per
socket; ``bench/bench_core.py`` measures it against this adapter in the same run
(see bench/RESULTS.md), and this adapter was kept because it needs no thread, no
extra dependency in the hot path, and measured faster on request/reply.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import attrs
import trio
import zmq

__all__ = ["SOCKET_TYPES", "ReceiveStopped", "SocketOptions", "ZmqSocket", "default_context", "open_socket"]

log = logging.getLogger("switchyard.transports.zmq")

SOCKET_TYPES = {
    "REQ": zmq.REQ,
    "REP": zmq.REP,
    "DEALER": zmq.DEALER,
    "ROUTER": zmq.ROUTER,
    "PUB": zmq.PUB,
    "SUB": zmq.SUB,
    "PUSH": zmq.PUSH,
    "PULL": zmq.PULL,
    "XPUB": zmq.XPUB,
    "XSUB": zmq.XSUB,
    "PAIR": zmq.PAIR,
}

Frame = bytes | bytearray | memoryview | zmq.Frame

# Plain ints: pyzmq's enum members cost an enum construction per flag operation.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
# pyzmq's multipart helpers combine enum flags per frame (an enum construction each);
# the frames go out through the backend's single-frame calls with int flags instead.
_backend_send = zmq.backend.Socket.send
_backend_recv = zmq.backend.Socket.recv
_EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
POLLOUT = int(zmq.POLLOUT)


class ReceiveStopped(trio.ClosedResourceError):
    """Raised by a receive after :meth:`ZmqSocket.stop_receiving` (the socket still sends)."""


@attrs.frozen
class SocketOptions:
    """Socket options applied before bind/connect.

    ``max_message_size`` is libzmq's ``MAXMSGSIZE``: a peer sending a bigger message is
    *disconnected* by libzmq without any reply, so bridges keep it well above their
    own per-message limit (which does answer). ``extra`` sets any other option by its
    zmq name, e.g. ``{"CURVE_SERVER": 1}``.
    """

    sndhwm: int = 1000
    rcvhwm: int = 1000
    linger_ms: int = 0
    max_message_size: int = -1
    router_mandatory: bool = False
    identity: bytes | None = None
    subscribe: tuple[bytes, ...] = ()
    immediate: bool = False
    reconnect_ivl_ms: int | None = None
    reconnect_ivl_max_ms: int | None = None
    tcp_keepalive: bool = False
    extra: dict[str, Any] = attrs.Factory(dict)

    def apply(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.SNDHWM, self.sndhwm)
        sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
        sock.setsockopt(zmq.LINGER, self.linger_ms)
        if self.max_message_size >= 0:
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_size)
        if self.router_mandatory and sock.type == zmq.ROUTER:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if self.identity is not None:
            sock.setsockopt(zmq.IDENTITY, self.identity)
        if self.immediate:
            sock.setsockopt(zmq.IMMEDIATE, 1)
        if self.reconnect_ivl_ms is not None:
            sock.setsockopt(zmq.RECONNECT_IVL, self.reconnect_ivl_ms)
        if self.reconnect_ivl_max_ms is not None:
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, self.reconnect_ivl_max_ms)
        if self.tcp_keepalive:
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        for name, value in self.extra.items():
            option = getattr(zmq, name.upper(), None)
            if not isinstance(option, int):
                raise ValueError(f"unknown ZeroMQ socket option {name!r}")
            sock.set(option, value)
        if sock.type == zmq.SUB:
            for topic in self.subscribe:
                sock.setsockopt(zmq.SUBSCRIBE, topic)


def default_context() -> zmq.Context:
    """The process-wide ZeroMQ context (one per process is the ZeroMQ norm)."""
    return zmq.Context.instance()


class ZmqSocket:
    """A pyzmq socket driven by Trio. Create with :func:`open_socket`."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.socket = sock
        self._fd = cast(int, sock.getsockopt(zmq.FD))
        # EVENTS is an int option; the cast gives the hot path a typed bound method.
        self._get_option = cast(Callable[[int], int], sock.get)
        self._send_frame = cast(Callable[[Any, int, bool], Any], _backend_send.__get__(sock))
        self._recv_frame = cast(Callable[[int, bool], Any], _backend_recv.__get__(sock))
        # A ROUTER's first frame (the peer's routing id) is always followed by more.
        self._router = sock.type == zmq.ROUTER
        # One sender and one receiver at a time; the rest queue FIFO on a parking lot.
        self._sending = False
        self._receiving = False
        self._send_turn = trio.lowlevel.ParkingLot()
        self._recv_turn = trio.lowlevel.ParkingLot()
        self._fd_waiting = False
        self._fd_flag = 0
        # True while the fd waiter sits in wait_readable (what a poke may wake).
        self._fd_parked = False
        self._parked: dict[int, trio.Event] = {}
        self._closed = False
        self._recv_stopped = False
        #: Endpoints bound so far, resolved (``tcp://127.0.0.1:*`` shows its port).
        self.endpoints: list[str] = []
        self._ipc_files: list[tuple[str, tuple[int, int]]] = []

    # -- public operations ------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def bind(self, endpoint: str) -> str:
        """Bind and return the resolved endpoint (``tcp://127.0.0.1:*`` gets its port).

        For ``ipc://PATH`` a missing parent directory is created owner-only (0700),
        and the socket file is removed when this socket closes (if it is still the
        file this socket bound: a newer server's socket at the same path is left).
        """
        path = endpoint[len("ipc://") :] if endpoint.startswith("ipc://") else ""
        if path and not path.startswith("@"):  # "@name" is Linux's abstract namespace: no file
            os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        self.socket.bind(endpoint)
        resolved = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.endpoints.append(resolved)
        if path and not path.startswith("@"):
            try:
                st = os.stat(path)
                self._ipc_files.append((path, (st.st_dev, st.st_ino)))
            except OSError:
                pass
        return resolved

    def connect(self, endpoint: str) -> None:
        self.socket.connect(endpoint)

    async def send(self, data: Frame, *, copy: bool = False) -> None:
        """Send one single-frame message."""
        await self.send_multipart((data,), copy=copy)

    async def send_multipart(self, frames: Sequence[Frame], *, copy: bool = False) -> None:
        """Send ``frames`` as one message; waits while the socket is at its HWM."""
        await self._operate(self._send_frames, (frames,), copy, POLLOUT, "_sending", self._send_turn)

    def try_send_multipart(self, frames: Sequence[Frame], *, copy: bool = False) -> bool:
        """Send now if the socket has room and no other task is sending; else False.

        Not a checkpoint: for hot paths that checkpoint elsewhere (e.g. a task
        that ends right after its reply).
        """
        if self._sending or self._closed:
            return False
        try:
            self._send_frames(frames, _NOBLOCK, copy=copy)
        except zmq.Again:
            return False
        finally:
            self._after_op()
        return True

    async def recv(self) -> bytes:
        """Receive a single-frame message as bytes (extra frames are an error)."""
        frames = await self.recv_multipart(copy=True)
        if len(frames) != 1:
            raise ValueError(f"expected a single-frame message, got {len(frames)} frames")
        return frames[0]

    async def recv_multipart(self, *, copy: bool = True) -> list[Any]:
        """Receive one whole message: ``bytes`` frames, or ``zmq.Frame`` with ``copy=False``."""
        return await self._recv_waiting(copy, None)

    async def _operate(
        self,
        op: Any,
        args: tuple[Any, ...],
        copy: bool,
        flag: int,
        turn_flag: str,
        turn: trio.lowlevel.ParkingLot,
        *,
        ready: bool = True,
    ) -> Any:
        """Run ``op(*args, NOBLOCK, copy=copy)`` in this direction's turn, waiting on ``flag`` while EAGAIN.

        ``ready=False``: read ``EVENTS`` before the first try instead of trying blind.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = await self._acquire(turn_flag, turn)
        events: int | None = None
        try:
            while True:
                self._check_open(flag)
                if not ready:
                    if events is None:
                        events = self._events()
                    if not events & flag:
                        await self._wait_for(flag, events)  # always waits at least once
                        waited = ready = True
                        events = None
                        continue
                try:
                    result = op(*args, _NOBLOCK, copy=copy)
                except zmq.Again:
                    ready = False
                    events = None
                    continue
                except zmq.ZMQError as exc:
                    self._after_op()
                    if exc.errno == zmq.ENOTSOCK:
                        raise trio.ClosedResourceError("socket closed") from exc
                    raise
                self._after_op()
                break
        finally:
            self._release(turn_flag, turn)
        if not waited:  # every Trio operation checkpoints; a wait already did
            await trio.lowlevel.cancel_shielded_checkpoint()
        return result

    def recv_multipart_nowait(self, *, copy: bool = True) -> list[Any]:
        """Receive a whole message if one is queued, else raise ``trio.WouldBlock``.

        Not a checkpoint: for loops that drain a burst of messages and checkpoint
        once per burst.
        """
        frames = self.try_recv_multipart(copy=copy)
        if frames is None:
            raise trio.WouldBlock
        return frames

    def try_recv_multipart(self, *, copy: bool = True) -> list[Any] | None:
        """A whole message if one is queued now (and no task is receiving), else ``None``.

        Not a checkpoint and no exception when nothing is there: the cheapest way
        to drain what has arrived. ``None`` also after :meth:`stop_receiving` or close.
        """
        if self._receiving or self._closed or self._recv_stopped:
            return None
        events = self._get_option(_EVENTS)
        if events & self._fd_flag:
            self._poke()  # the read may have eaten the fd waiter's edge
        if not events & POLLIN:
            return None
        try:
            frames = self._recv_frames(_NOBLOCK, copy=copy)
        except zmq.Again:
            return None
        finally:
            self._after_op()
        return frames

    async def recv_multipart_burst(self, *, copy: bool = True) -> list[Any]:
        """:meth:`recv_multipart`, but a checkpoint only when it has to wait.

        For a loop that serves whatever has arrived: a message already queued costs
        one ``EVENTS`` read and no scheduler pass, so the loop must checkpoint by
        itself every so often (other tasks run only at checkpoints).
        """
        if not (self._receiving or self._closed or self._recv_stopped):
            events = self._get_option(_EVENTS)
            if events & self._fd_flag:
                self._poke()
            if events & POLLIN:
                try:
                    return self._recv_frames(_NOBLOCK, copy=copy)
                except zmq.Again:
                    pass
                finally:
                    self._after_op()
            else:
                # nothing there: wait without reading EVENTS again (this read re-armed the edge)
                return await self._recv_waiting(copy, events)
        return await self._recv_waiting(copy, None)

    async def _recv_waiting(self, copy: bool, events: int | None) -> list[Any]:
        """Take the receive turn, wait for ``POLLIN``, receive: :meth:`recv_multipart`'s body.

        ``events``: an ``EVENTS`` value without ``POLLIN`` read just now (no await
        since), so the first look needs no read and the call certainly waits (every
        wait is a checkpoint, which makes the up-front cancellation check redundant).
        The send direction's twin is the generic :meth:`_operate`.
        """
        if events is None:
            await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while self._receiving:
            await self._recv_turn.park()
            waited, events = True, None  # that value is stale now
        self._receiving = True
        try:
            while True:
                self._check_open(POLLIN)
                if events is None:
                    events = self._events()
                if not events & POLLIN:
                    if self._fd_waiting:
                        await self._wait_for(POLLIN, events)
                    else:
                        await self._wait_on_fd(POLLIN)
                    waited = True  # POLLIN was set when the wait returned: try at once
                try:
                    frames = self._recv_frames(_NOBLOCK, copy=copy)
                except zmq.Again:
                    events = None
                    continue
                except zmq.ZMQError as exc:
                    self._after_op()
                    if exc.errno == zmq.ENOTSOCK:
                        raise trio.ClosedResourceError("socket closed") from exc
                    raise
                self._after_op()
                break
        finally:
            self._receiving = False
            if self._recv_turn:
                self._recv_turn.unpark()
        if not waited:  # every Trio operation checkpoints; a wait already did
            await trio.lowlevel.cancel_shielded_checkpoint()
        return frames

    def stop_receiving(self) -> None:
        """Make every receive, waiting now or started later, raise :class:`ReceiveStopped`.

        Sending goes on (a server that drains still answers what it has read). A
        cheaper way to stop a reader than a cancel scope around each of its receives.
        """
        if self._recv_stopped:
            return
        self._recv_stopped = True
        if self._fd_flag == POLLIN:
            self._poke()
        event = self._parked.pop(POLLIN, None)
        if event is not None:
            event.set()
        self._recv_turn.unpark_all()

    async def aclose(self) -> None:
        """Close the socket (LINGER applies); waiters get ``ClosedResourceError``."""
        if self._closed:
            return
        self._closed = True
        trio.lowlevel.notify_closing(self._fd)
        self._send_turn.unpark_all()
        self._recv_turn.unpark_all()
        for event in self._parked.values():
            event.set()
        self._parked.clear()
        self.socket.close()
        for path, identity in self._ipc_files:
            try:
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == identity:
                    os.unlink(path)
            except OSError:
                pass  # already gone (libzmq may unlink it itself)
        self._ipc_files.clear()
        await trio.lowlevel.checkpoint()

    def _send_frames(self, frames: Sequence[Frame], flags: int, *, copy: bool) -> None:
        """``send_multipart`` with int flags; a multipart message is queued whole or not at all."""
        if not frames:
            raise ValueError("a message needs at least one frame")
        send = self._send_frame
        more = flags | _SNDMORE
        last = len(frames) - 1
        for i in range(last):
            send(frames[i], more, copy)
        send(frames[last], flags, copy)

    def _recv_frames(self, flags: int, *, copy: bool) -> list[Any]:
        """``recv_multipart`` with int flags (the first frame may raise ``zmq.Again``; the rest are there).

        Frames come in as ``zmq.Frame``, whose ``more`` the backend has already read
        (a ``getsockopt(RCVMORE)`` per frame costs ~1 us in pyzmq, three times the
        ``bytes`` copy ``copy=True`` makes); a ROUTER's routing id needs no look.
        """
        recv = self._recv_frame
        if copy:
            if self._router:
                parts = [recv(flags, True)]
                frame = recv(flags, False)
            else:
                frame = recv(flags, False)
                parts = []
            parts.append(frame.bytes)
            while frame.more:
                frame = recv(flags, False)
                parts.append(frame.bytes)
            return parts
        frame = recv(flags, False)
        parts = [frame]
        while frame.more:
            frame = recv(flags, False)
            parts.append(frame)
        return parts

    # -- readiness machinery ------------------------------------------------------
    def _check_open(self, flag: int = 0) -> None:
        if self._closed:
            raise trio.ClosedResourceError("socket closed")
        if flag == POLLIN and self._recv_stopped:
            raise ReceiveStopped("this socket no longer receives")

    async def _acquire(self, flag: str, turn: trio.lowlevel.ParkingLot) -> bool:
        """Take this direction's turn; True if we had to wait (a checkpoint happened)."""
        waited = False
        while getattr(self, flag):
            await turn.park()
            waited = True
        setattr(self, flag, True)
        return waited

    def _release(self, flag: str, turn: trio.lowlevel.ParkingLot) -> None:
        setattr(self, flag, False)
        if turn:
            turn.unpark()

    def _after_op(self) -> None:
        """After our send/recv: wake the fd waiter only if what it waits for is now ready.

        Our operation may have consumed the fd's edge; if ``EVENTS`` shows nothing for
        the waiter, the next change of state raises a fresh edge, so it can sleep on.
        """
        if self._fd_parked and self._get_option(_EVENTS) & self._fd_flag:
            self._poke()

    def _events(self) -> int:
        """Read ``EVENTS``, poking the fd waiter if what it waits for is ready (the read may eat its edge)."""
        events = self._get_option(_EVENTS)
        if events & self._fd_flag:
            self._poke()
        return events

    def _poke(self) -> None:
        if self._fd_parked:
            self._fd_parked = False
            trio.lowlevel.notify_closing(self._fd)  # wakes only the fd waiter (nobody else waits on it)

    async def _wait_for(self, flag: int, events: int | None = None) -> None:
        """Return once ``flag`` is set; ``events``: an ``EVENTS`` value just read (saves a read)."""
        while True:
            self._check_open(flag)
            if events is None:
                events = self._events()
            if events & flag:
                return
            if self._fd_waiting:
                event = trio.Event()
                self._parked[flag] = event
                try:
                    await event.wait()
                finally:
                    if self._parked.get(flag) is event:
                        del self._parked[flag]
                events = None
                continue
            await self._wait_on_fd(flag)
            return

    async def _wait_on_fd(self, flag: int) -> None:
        self._fd_waiting = True
        self._fd_flag = flag
        try:
            while True:
                self._fd_parked = True
                try:
                    await trio.lowlevel.wait_readable(self._fd)
                except trio.ClosedResourceError:
                    if self._closed:
                        raise
                    # else: poked (see _poke); re-read EVENTS below
                finally:
                    self._fd_parked = False
                self._check_open(flag)
                events = self._get_option(_EVENTS)
                if self._parked:
                    for parked_flag in [f for f in self._parked if events & f]:
                        self._parked.pop(parked_flag).set()
                if events & flag:
                    return
        finally:
            self._fd_parked = False
            self._fd_waiting = False
            self._fd_flag = 0
            if self._parked:
                for event in self._parked.values():
                    event.set()  # hand the fd over: one of them becomes the fd waiter
                self._parked.clear()


@asynccontextmanager
async def open_socket(
    socket_type: int | str,
    *,
    bind: str | Iterable[str] | None = None,
    connect: str | Iterable[str] | None = None,
    options: SocketOptions | None = None,
    context: zmq.Context | None = None,
) -> AsyncIterator[ZmqSocket]:
    """A :class:`ZmqSocket` of ``socket_type`` (``zmq.ROUTER`` or ``"ROUTER"``), closed on exit.

    Options apply before any bind/connect. ``zs.endpoints`` lists the resolved bound
    endpoints (useful with ``tcp://127.0.0.1:*``).
    """
    if isinstance(socket_type, str):
        try:
            socket_type = SOCKET_TYPES[socket_type.upper()]
        except KeyError:
            raise ValueError(f"unknown ZeroMQ socket type {socket_type!r}") from None
    ctx = context if context is not None else default_context()
    raw = ctx.socket(socket_type)
    zs = ZmqSocket(raw)
    try:
        (options or SocketOptions()).apply(raw)
        for ep in _as_list(bind):
            zs.bind(ep)
        for ep in _as_list(connect):
            zs.connect(ep)
        yield zs
    finally:
        with trio.CancelScope(shield=True):
            await zs.aclose()


def _as_list(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)
