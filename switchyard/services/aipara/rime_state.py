"""The Rime state actor: the aipara IME plugin's state channel (REQ/REP, tcp 10086).

Each IME client sends its state (``state``), what it committed (``commit``), a
command (``command``, e.g. ``paste``) or a pong, and waits at most 100 ms for exactly
one reply. Clients may use REQ (as the C++ client does) or, like newer plugin builds,
a DEALER sending single frames; both get the same replies. The actor serves any number of clients at once through a ROUTER
(:class:`~switchyard.transports.zmq_bridges.ReqRepServer`), keeps every client's
state, and answers each request with the commands queued for that client
(``command_messege``), drained in order. Malformed requests get an error reply in
the same shape and change nothing. The logic is the pure
:class:`~switchyard.services.aipara.rime_book.RimeStateBook`; this module adds the
socket, the clock and the mailbox.

Inside the system (``ask``/``tell`` on the actor's ref):

* :class:`QueueCommand` ``(command, client_id=None)``: queue a command for one client
  or, with ``client_id=None``, for every known client; answers a :class:`QueueResult`.
  ``command`` is an ``aipara`` command object or a plain mapping
  (``{"command": "set_option", "option_name": ..., "option_value": ...}``).
* :class:`GetClient` / :class:`ListClients`: :class:`~switchyard.services.aipara.rime_book.ClientState` snapshots;
  :class:`RimeStats`: counters.
* :class:`Subscribe` / :class:`Unsubscribe`, or simply :func:`subscribe_events`:
  receive :class:`~switchyard.services.aipara.rime_book.CommitEvent` (and, if asked,
  :class:`~switchyard.services.aipara.rime_book.CommandEvent`) as clients report them. A
  subscriber whose buffer fills up is cut off (its channel is closed) rather than
  letting events pile up; it sees the end of its stream and may subscribe again.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import attrs
import trio

from switchyard.protocols.codec import json_codec
from switchyard.runtime import Actor, ActorRef, ActorStopped, MailboxFull
from switchyard.runtime.config import endpoint as config_endpoint
from switchyard.runtime.ratelog import RateLimitedLog
from switchyard.runtime.stats import timed
from switchyard.services.aipara.protocol import (
    COMMAND_KINDS,
    BadRequest,
    CommandError,
    command_from_dict,
    error_response,
)
from switchyard.services.aipara.rime_book import CommandEvent, CommitEvent, RimeEvent, RimeStateBook, client_key
from switchyard.services.aipara.rime_messages import read_rime_request
from switchyard.transports.zmq_bridges import (
    LIMIT_KEYS_MOVED,
    EndpointConfig,
    EndpointLimits,
    HandlerTimeout,
    MessageTooLarge,
    ReqRepServer,
    current_identity,
)
from switchyard.transports.zmq_curve import CurveConfig, enable_curve

__all__ = [
    "GetClient",
    "ListClients",
    "QueueCommand",
    "QueueResult",
    "RimeStateActor",
    "RimeStateConfig",
    "RimeStats",
    "Subscribe",
    "Unsubscribe",
    "subscribe_events",
]

EVENT_KINDS = {"commit": CommitEvent, "command": CommandEvent}


@attrs.frozen
class RimeStateConfig:
    """``[actor.config]`` of a ``rime_state`` actor."""

    renamed_keys: ClassVar[dict[str, str]] = LIMIT_KEYS_MOVED

    endpoint: str = attrs.field(default="tcp://127.0.0.1:10086", validator=config_endpoint)
    #: Limits (``[actor.config.limits]``): requests up to 64 KiB; no timer per request (state lives here).
    limits: EndpointLimits = attrs.field(factory=lambda: EndpointLimits(max_message_size=64 * 1024))
    #: Clients remembered at once (least recently seen forgotten first).
    max_clients: int = 1024
    #: Commands waiting per client; queueing more is refused, not dropped.
    max_outbox: int = 256
    #: Seconds after which a silent client (and its outbox) is forgotten.
    client_ttl: float = 24 * 3600.0
    expire_interval: float = 60.0
    max_subscribers: int = 64
    curve: CurveConfig = CurveConfig()


@attrs.frozen
class QueueCommand:
    """Queue ``command`` for ``client_id`` (or every known client if None)."""

    command: Any
    client_id: str | None = None


@attrs.frozen
class QueueResult:
    queued: tuple[str, ...]
    refused: tuple[str, ...] = ()


@attrs.frozen
class GetClient:
    client_id: str


@attrs.frozen
class ListClients:
    pass


@attrs.frozen
class RimeStats:
    """Ask for the counters: requests, bad requests, commands delivered, events, clients."""


@attrs.frozen
class Subscribe:
    """Deliver events of ``kinds`` to ``channel`` (``send_nowait``) until unsubscribed."""

    channel: trio.MemorySendChannel[RimeEvent] = attrs.field(eq=False)
    kinds: frozenset[str] = frozenset({"commit"})


@attrs.frozen
class Unsubscribe:
    subscription: int


def _now_ms() -> int:
    return int(time.time() * 1000)


class RimeStateActor(Actor):
    """aipara Rime state service: per-IME-client state and command outboxes over REQ/REP."""

    Config = RimeStateConfig
    mailbox_capacity = 128

    async def on_start(self) -> None:
        cfg: RimeStateConfig = self.config
        self.book = RimeStateBook(max_clients=cfg.max_clients, max_outbox=cfg.max_outbox, client_ttl=cfg.client_ttl)
        self.stats = {"requests": 0, "bad_requests": 0, "commands_delivered": 0, "events": 0, "subscribers_cut": 0}
        self._subscribers: dict[int, tuple[trio.MemorySendChannel[RimeEvent], frozenset[str]]] = {}
        self._next_subscription = 1
        await self.enter(self._closing_subscribers())
        extra = await enable_curve(cfg.curve, self.nursery, default_domain=self.name)
        endpoint = EndpointConfig.from_config(cfg, socket_extra=extra)
        # accept_dealer: newer aipara builds open this port from a DEALER ([identity, body]).
        self._bad = RateLimitedLog(self.log, what="bad requests")
        self.server = ReqRepServer(
            endpoint,
            timed(self._serve_request, self.system.metrics.request_observer(self.name, "zmq_rep")),
            error_reply=self._error_reply,
            accept_dealer=True,
            name=f"{self.name}.reqrep",
            logger=self.log,
        )
        self.endpoint = await self.nursery.start(self.server.serve)
        self.nursery.start_soon(self._expire_loop)
        self.log.info("Rime state service on %s%s", self.endpoint, " (CURVE)" if cfg.curve.enabled else "")

    async def on_stop(self) -> None:
        await self.server.drain()

    # -- the socket side ---------------------------------------------------------------

    def _serve_request(self, body: bytes) -> bytes:
        # Plain, not async: nothing here waits (state lives in this actor), and the
        # bridge then needs no coroutine and no cancel scope per request.
        client = client_key(current_identity())
        request = read_rime_request(body, max_bytes=self.config.limits.max_message_size)
        self.stats["requests"] += 1
        if isinstance(request, tuple):  # a plain state report: the keystroke path, no objects built
            reply, delivered, evicted = self.book.handle_quick_state(
                client, request, now=trio.current_time(), wall_ms=_now_ms()
            )
            if evicted:
                self._log_evicted(evicted)
            self.stats["commands_delivered"] += delivered
            return reply
        if isinstance(request, BadRequest):
            self.stats["bad_requests"] += 1
            self._bad("bad request from %s: %s", client, request.reason)
        handled = self.book.handle(client, request, now=trio.current_time(), wall_ms=_now_ms())
        self._log_evicted(handled.evicted)
        self.stats["commands_delivered"] += handled.delivered
        for event in handled.events:
            self._publish(event)
        return json_codec.encode(handled.reply)

    def _log_evicted(self, evicted: tuple[str, ...]) -> None:
        for victim in evicted:
            self._bad(
                "client limit (%d) reached: forgot least recently seen client %s", self.config.max_clients, victim
            )

    def _error_reply(self, exc: BaseException, body: Any) -> bytes:
        if isinstance(exc, MessageTooLarge):
            reason = f"request too large: {exc.size} bytes, limit {exc.limit}"
        elif isinstance(exc, HandlerTimeout):
            reason = "request took too long to handle"
        elif isinstance(exc, ValueError):
            reason = str(exc)
        else:
            reason = f"internal error: {type(exc).__name__}"
        self.stats["bad_requests"] += 1
        return json_codec.encode(
            error_response(client_id=client_key(current_identity()), reason=reason, timestamp_ms=_now_ms())
        )

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(self.config.expire_interval)
            for client in self.book.expire(trio.current_time()):
                self.log.info("forgot client %s (silent for %g s)", client, self.config.client_ttl)

    # -- events ------------------------------------------------------------------------

    def _publish(self, event: RimeEvent) -> None:
        self.stats["events"] += 1
        kind = "commit" if isinstance(event, CommitEvent) else "command"
        for sub_id, (channel, kinds) in list(self._subscribers.items()):
            if kind not in kinds:
                continue
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self.stats["subscribers_cut"] += 1
                self.log.warning("subscriber %d is not keeping up (buffer full): closing its stream", sub_id)
                self._drop_subscriber(sub_id)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._drop_subscriber(sub_id)

    def _drop_subscriber(self, sub_id: int) -> None:
        entry = self._subscribers.pop(sub_id, None)
        if entry is not None:
            entry[0].close()

    @asynccontextmanager
    async def _closing_subscribers(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for sub_id in list(self._subscribers):
                self._drop_subscriber(sub_id)

    # -- the mailbox side --------------------------------------------------------------

    async def handle(self, message: Any) -> Any:
        if isinstance(message, QueueCommand):
            return self._queue(message)
        if isinstance(message, GetClient):
            return self.book.client(message.client_id)
        if isinstance(message, ListClients):
            return self.book.clients()
        if isinstance(message, Subscribe):
            return self._subscribe(message)
        if isinstance(message, Unsubscribe):
            self._drop_subscriber(message.subscription)
            return None
        if isinstance(message, RimeStats):
            return {**self.stats, "clients": len(self.book), "subscribers": len(self._subscribers)}
        raise TypeError(f"{type(self).__name__} does not understand {type(message).__name__}")

    def _queue(self, message: QueueCommand) -> QueueResult:
        command = message.command
        if isinstance(command, Mapping):
            command = command_from_dict(command)
        elif not isinstance(command, tuple(COMMAND_KINDS.values())):
            raise CommandError(f"not a command for the client: {command!r}")
        wall = _now_ms()
        if message.client_id is None:
            queued, refused = self.book.enqueue_all(command, wall_ms=wall)
            return QueueResult(queued, refused)
        self.book.enqueue(message.client_id, command, wall_ms=wall)
        return QueueResult((message.client_id,))

    def _subscribe(self, message: Subscribe) -> int:
        unknown = set(message.kinds) - set(EVENT_KINDS)
        if unknown or not message.kinds:
            raise ValueError(f"unknown event kind(s) {sorted(unknown)}; known: {', '.join(EVENT_KINDS)}")
        if len(self._subscribers) >= self.config.max_subscribers:
            raise RuntimeError(f"subscriber limit ({self.config.max_subscribers}) reached")
        sub_id = self._next_subscription
        self._next_subscription += 1
        self._subscribers[sub_id] = (message.channel, frozenset(message.kinds))
        return sub_id


@asynccontextmanager
async def subscribe_events(
    ref: ActorRef, *, kinds: Iterable[str] = ("commit",), buffer: int = 64
) -> AsyncIterator[trio.MemoryReceiveChannel[RimeEvent]]:
    """``async with subscribe_events(ref) as events: async for event in events: ...``

    The stream ends if the Rime state actor stops or cuts this subscriber off for
    falling ``buffer`` events behind.
    """
    send, receive = trio.open_memory_channel[RimeEvent](buffer)
    async with receive:
        sub_id = await ref.ask(Subscribe(send, frozenset(kinds)))
        try:
            yield receive
        finally:
            try:
                ref.tell_nowait(Unsubscribe(sub_id))
            except (MailboxFull, ActorStopped):
                pass  # our channel closes below, so the actor drops us at its next event anyway
