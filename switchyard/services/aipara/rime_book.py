"""Per-client Rime state and command outboxes, as pure code.

:class:`RimeStateBook` is the whole brain of the Rime state service with the sockets
taken out: feed it each parsed request with the client's key and the time, get back
the reply to send and the events to publish; queue commands for one client or all.

What a caller may rely on:

* Every request gets exactly one reply dict from :meth:`RimeStateBook.handle`.
* A good request updates that client's state and drains its whole outbox into the
  reply's ``command_messege``, oldest first. A :class:`~switchyard.services.aipara.rime_messages.BadRequest`
  changes nothing: no state update, no drain (the queued commands wait for the next
  good request).
* Each queued command appears in exactly one reply, in queue order, for the client
  it was queued for. (Delivery past that point is the transport's: the protocol has
  no acknowledgement, so a reply the client never reads loses its commands.)
* Memory is bounded: at most ``max_clients`` clients (least recently seen evicted,
  reported in :attr:`Handled.evicted`) and ``max_outbox`` commands per client (a
  further command is refused with :class:`OutboxFull`, never silently dropped).

Time is passed in (``now`` monotonic seconds for expiry, ``wall_ms`` for wire
timestamps) so tests control it.

:meth:`RimeStateBook.handle_quick_state` is the server's hot path for the request
sent on every keystroke: it takes the checked fields
(:func:`~switchyard.services.aipara.rime_messages.read_rime_request`) and answers
the reply's bytes, with the same effect and bytes as :meth:`~RimeStateBook.handle`
plus encoding, but no report, reply dict or :class:`Handled` built on the way.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

import attrs

from switchyard.protocols.codec import json_codec
from switchyard.services.aipara.commands import OutboxCommand, command_to_wire
from switchyard.services.aipara.rime_messages import (
    BadRequest,
    ClientCommand,
    Pong,
    QuickState,
    RimeRequest,
    StateReport,
    SwitchOption,
    command_response,
    encode_command_response,
    error_response,
    response_name,
)

__all__ = [
    "ClientState",
    "CommandEvent",
    "CommitEvent",
    "Handled",
    "OutboxFull",
    "RimeEvent",
    "RimeStateBook",
    "UnknownClient",
    "client_key",
]


def client_key(identity: bytes) -> str:
    """A printable key for a ZeroMQ routing identity.

    Identities the client chose (the C++ client sets ``<client_id>-rime``) are kept as
    text; libzmq's generated 5-byte identities (leading zero byte) become ``0x<hex>``.
    """
    if identity and identity[0] != 0:
        try:
            text = identity.decode("ascii")
        except UnicodeDecodeError:
            pass
        else:
            if text.isprintable():
                return text
    return "0x" + identity.hex()


@attrs.frozen
class ClientState:
    """A snapshot of what we know about one client. Safe to hand to other actors."""

    client_id: str
    is_composing: bool | None = None
    switches: tuple[SwitchOption, ...] = ()
    properties: dict[str, Any] = attrs.field(factory=dict, hash=False)
    current_app: str = ""
    last_commit_text: str = ""
    last_commit_pinyin: str = ""
    client_timestamp: int | None = None
    last_seen: float = 0.0
    last_seen_ms: int = 0
    requests: int = 0
    bad_requests: int = 0
    pending_commands: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (for logs, a UI, a reply to another process)."""
        return attrs.asdict(self)


@attrs.frozen
class CommitEvent:
    """The user committed text in client ``client_id``."""

    client_id: str
    text: str
    pinyin: str
    current_app: str
    timestamp: int | None
    received_ms: int


@attrs.frozen
class CommandEvent:
    """Client ``client_id`` asked us to do something (e.g. ``paste``)."""

    client_id: str
    command: str
    command_value: str | None
    timestamp: int | None
    received_ms: int


RimeEvent = CommitEvent | CommandEvent


@attrs.frozen
class Handled:
    """The outcome of one request: the reply to send, events to publish, clients evicted."""

    reply: dict[str, Any] = attrs.field(hash=False)
    events: tuple[RimeEvent, ...] = ()
    delivered: int = 0
    evicted: tuple[str, ...] = ()


class OutboxFull(Exception):
    """The client's outbox is at its limit; the command was not queued."""

    def __init__(self, client_id: str, limit: int) -> None:
        super().__init__(f"outbox of client {client_id!r} is full ({limit} commands waiting)")
        self.client_id = client_id
        self.limit = limit


class UnknownClient(KeyError):
    """No client with that key has been seen (or it expired)."""

    def __str__(self) -> str:
        return f"unknown client {self.args[0]!r}"


@attrs.define(slots=True)
class _Client:
    """The live, mutable record behind :class:`ClientState` snapshots."""

    client_id: str
    last_seen: float
    is_composing: bool | None = None
    switches: dict[str, SwitchOption] = attrs.Factory(dict)
    properties: dict[str, Any] = attrs.Factory(dict)
    current_app: str = ""
    last_commit_text: str = ""
    last_commit_pinyin: str = ""
    client_timestamp: int | None = None
    last_seen_ms: int = 0
    requests: int = 0
    bad_requests: int = 0
    outbox: deque[dict[str, Any]] = attrs.Factory(deque)
    #: ``client_id`` as JSON, written once for every reply to this client.
    client_json: bytes = b""

    def snapshot(self) -> ClientState:
        return ClientState(
            client_id=self.client_id,
            is_composing=self.is_composing,
            switches=tuple(self.switches.values()),
            properties=dict(self.properties),
            current_app=self.current_app,
            last_commit_text=self.last_commit_text,
            last_commit_pinyin=self.last_commit_pinyin,
            client_timestamp=self.client_timestamp,
            last_seen=self.last_seen,
            last_seen_ms=self.last_seen_ms,
            requests=self.requests,
            bad_requests=self.bad_requests,
            pending_commands=len(self.outbox),
        )


@attrs.define
class RimeStateBook:
    """All clients' state and outboxes. Not thread-safe; one actor owns it."""

    max_clients: int = 1024
    max_outbox: int = 256
    client_ttl: float = 24 * 3600.0
    _clients: OrderedDict[str, _Client] = attrs.field(init=False, factory=OrderedDict)

    def __attrs_post_init__(self) -> None:
        if self.max_clients < 1 or self.max_outbox < 1 or self.client_ttl <= 0:
            raise ValueError("max_clients and max_outbox must be >= 1 and client_ttl > 0")

    # -- requests -----------------------------------------------------------------

    def handle(self, client_id: str, request: RimeRequest, *, now: float, wall_ms: int) -> Handled:
        """Apply one request from ``client_id`` and build its reply."""
        if isinstance(request, BadRequest):
            entry = self._clients.get(client_id)
            if entry is not None:
                entry.bad_requests += 1
            return Handled(reply=error_response(client_id=client_id, reason=request.reason, timestamp_ms=wall_ms))

        entry, evicted = self._touch(client_id, now, wall_ms)
        events: tuple[RimeEvent, ...] = ()

        if isinstance(request, StateReport):
            if request.is_composing is not None:
                entry.is_composing = request.is_composing
            for switch in request.switches:
                # Newer values win per name; switches the client stopped reporting stay known.
                entry.switches[switch.name] = switch
            if request.properties:
                entry.properties.update(request.properties)
            if request.timestamp is not None:
                entry.client_timestamp = request.timestamp
            found: list[RimeEvent] = []
            if request.commit is not None:
                commit = request.commit
                if commit.current_app:
                    entry.current_app = commit.current_app
                entry.last_commit_text = commit.text
                entry.last_commit_pinyin = commit.pinyin
                found.append(
                    CommitEvent(
                        client_id=client_id,
                        text=commit.text,
                        pinyin=commit.pinyin,
                        current_app=commit.current_app,
                        timestamp=request.timestamp,
                        received_ms=wall_ms,
                    )
                )
            if request.command is not None:
                found.append(_command_event(client_id, request.command, wall_ms))
            events = tuple(found)
        elif isinstance(request, ClientCommand):
            if request.timestamp is not None:
                entry.client_timestamp = request.timestamp
            events = (_command_event(client_id, request, wall_ms),)
        else:
            assert isinstance(request, Pong)

        commands = list(entry.outbox)
        entry.outbox.clear()
        reply = command_response(
            client_id=client_id, commands=commands, timestamp_ms=wall_ms, response=response_name(request)
        )
        return Handled(reply=reply, events=events, delivered=len(commands), evicted=evicted)

    def handle_quick_state(
        self, client_id: str, state: QuickState, *, now: float, wall_ms: int
    ) -> tuple[bytes, int, tuple[str, ...]]:
        """Apply a plain ``state`` request's checked fields; ``(reply, delivered, evicted)``.

        Same effect as :meth:`handle` with the :class:`StateReport` that
        ``parse_rime_request`` makes of the same body, and ``reply`` is
        ``json_codec.encode(handled.reply)`` byte for byte. A state request has no events.
        """
        composing, stamp, switches, properties = state
        entry, evicted = self._touch(client_id, now, wall_ms)
        if composing is not None:
            entry.is_composing = composing
        known = entry.switches
        for name, kind, on, index in switches:
            old = known.get(name)
            # An unchanged switch keeps its record (equal either way): no object per request.
            if old is None or old.state is not on or old.state_index != index or old.type != kind:
                known[name] = SwitchOption(name=name, type=kind, state=on, state_index=index)
        if properties:
            entry.properties.update(properties)
        if stamp is not None:
            entry.client_timestamp = stamp
        outbox = entry.outbox
        if not outbox:
            return encode_command_response(entry.client_json, (), wall_ms, "rime_state_received"), 0, evicted
        commands = list(outbox)
        outbox.clear()
        reply = encode_command_response(entry.client_json, commands, wall_ms, "rime_state_received")
        return reply, len(commands), evicted

    # -- commands -----------------------------------------------------------------

    def enqueue(self, client_id: str, command: OutboxCommand, *, wall_ms: int) -> None:
        """Queue ``command`` for ``client_id``'s next reply.

        Raises :class:`UnknownClient` if the client is not known, :class:`OutboxFull` if
        its outbox is at ``max_outbox``.
        """
        entry = self._clients.get(client_id)
        if entry is None:
            raise UnknownClient(client_id)
        if len(entry.outbox) >= self.max_outbox:
            raise OutboxFull(client_id, self.max_outbox)
        entry.outbox.append(command_to_wire(command, wall_ms))

    def enqueue_all(self, command: OutboxCommand, *, wall_ms: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Queue ``command`` for every known client: ``(queued_for, refused_full)``."""
        queued: list[str] = []
        refused: list[str] = []
        for client_id in list(self._clients):
            try:
                self.enqueue(client_id, command, wall_ms=wall_ms)
            except OutboxFull:
                refused.append(client_id)
            else:
                queued.append(client_id)
        return tuple(queued), tuple(refused)

    # -- queries and housekeeping ---------------------------------------------------

    def client(self, client_id: str) -> ClientState | None:
        entry = self._clients.get(client_id)
        return entry.snapshot() if entry is not None else None

    def clients(self) -> tuple[ClientState, ...]:
        """Every known client, least recently seen first."""
        return tuple(entry.snapshot() for entry in self._clients.values())

    def pending(self, client_id: str) -> tuple[dict[str, Any], ...]:
        """The commands waiting for ``client_id``, oldest first (copies)."""
        entry = self._clients.get(client_id)
        if entry is None:
            raise UnknownClient(client_id)
        return tuple(dict(c) for c in entry.outbox)

    def expire(self, now: float) -> tuple[str, ...]:
        """Forget clients not seen for ``client_ttl`` seconds (their outboxes go too)."""
        gone = [cid for cid, entry in self._clients.items() if now - entry.last_seen >= self.client_ttl]
        for cid in gone:
            del self._clients[cid]
        return tuple(gone)

    def __len__(self) -> int:
        return len(self._clients)

    def _touch(self, client_id: str, now: float, wall_ms: int) -> tuple[_Client, tuple[str, ...]]:
        """The client's record, created (evicting the least recently seen) if new, marked seen now."""
        clients = self._clients
        entry = clients.get(client_id)
        evicted: tuple[str, ...] = ()
        if entry is None:
            gone: list[str] = []
            while len(clients) >= self.max_clients:
                victim, _ = clients.popitem(last=False)
                gone.append(victim)
            evicted = tuple(gone)
            entry = clients[client_id] = _Client(
                client_id=client_id, last_seen=now, client_json=json_codec.encode(client_id)
            )
        else:
            clients.move_to_end(client_id)
        entry.last_seen = now
        entry.last_seen_ms = wall_ms
        entry.requests += 1
        return entry, evicted


def _command_event(client_id: str, command: ClientCommand, wall_ms: int) -> CommandEvent:
    return CommandEvent(
        client_id=client_id,
        command=command.command,
        command_value=command.command_value,
        timestamp=command.timestamp,
        received_ms=wall_ms,
    )
