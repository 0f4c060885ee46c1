"""Socket.IO protocol 5, server side, sans-IO.

* :class:`Packet` is one logical Socket.IO packet. Binary payloads are ordinary
  ``bytes`` anywhere inside ``data``; :func:`encode_packet` turns an EVENT/ACK that holds
  bytes into a BINARY_EVENT/BINARY_ACK string (placeholders
  ``{"_placeholder":true,"num":N}``) followed by the raw attachments, and
  :class:`Decoder` reassembles them, so a decoded packet is always EVENT or ACK.
* :class:`ServerConnection` is the state of one client over one Engine.IO session:
  namespaces connect (with an optional auth payload) and are accepted or refused with a
  CONNECT_ERROR, events and acknowledgements flow, and ack ids are tracked both ways.
  It yields typed events and queues the frames to send (:meth:`ServerConnection.take_outgoing`).

Wire format: ``<type>[<attachments>-][<nsp>,][<id>][<JSON>]``; the namespace is left
out when it is ``/``. Decoding is as strict as the reference ``socket.io-parser``
(valid payload shape per type, reserved event names refused, attachments checked) and
raises only :class:`SocketIOError`, whatever the input.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from typing import Any

import attrs

__all__ = [
    "DEFAULT_NAMESPACE",
    "RESERVED_EVENTS",
    "AckReceived",
    "ClientDisconnected",
    "ConnectRequested",
    "Decoder",
    "EventReceived",
    "Packet",
    "PacketDropped",
    "PacketType",
    "ServerConnection",
    "SocketIOError",
    "encode_packet",
]

DEFAULT_NAMESPACE = "/"
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
_MAX_ID_DIGITS = 15  # keeps ids exact as JavaScript numbers


class SocketIOError(ValueError):
    """Bad Socket.IO input (or a packet that cannot be encoded)."""


class PacketType(enum.IntEnum):
    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


_LOGICAL = {PacketType.BINARY_EVENT: PacketType.EVENT, PacketType.BINARY_ACK: PacketType.ACK}


def _logical_type(value: int) -> PacketType:
    kind = PacketType(value)
    return _LOGICAL.get(kind, kind)


def _has_binary(data: Any) -> bool:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return True
    if isinstance(data, (list, tuple)):
        return any(_has_binary(item) for item in data)
    if isinstance(data, dict):
        return any(_has_binary(item) for item in data.values())
    return False


def _check_shape(kind: PacketType, data: Any, ack_id: int | None) -> str | None:
    """Why (kind, data, id) is not a valid packet, or None."""
    if ack_id is not None and kind not in (PacketType.EVENT, PacketType.ACK):
        return f"{kind.name} packets carry no id"
    if kind is PacketType.CONNECT:
        return None if data is None or isinstance(data, dict) else "CONNECT data must be an object"
    if kind is PacketType.DISCONNECT:
        return None if data is None else "DISCONNECT carries no data"
    if kind is PacketType.CONNECT_ERROR:
        return None if isinstance(data, (dict, str)) else "CONNECT_ERROR data must be an object or a string"
    if kind is PacketType.EVENT:
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            return "EVENT data must be a list starting with the event name"
        return None
    if kind is PacketType.ACK:
        if ack_id is None:
            return "ACK needs an id"
        return None if isinstance(data, list) else "ACK data must be a list"
    return f"unknown packet type {kind!r}"  # pragma: no cover - enum is closed


def _check_packet(instance: Packet, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if instance.id is not None and (not isinstance(instance.id, int) or instance.id < 0):
        raise ValueError("id must be a non-negative int")
    nsp = instance.nsp
    if not isinstance(nsp, str) or not nsp.startswith("/") or "," in nsp or "?" in nsp:
        raise ValueError(f"namespace must start with '/' and hold no ',' or '?': {nsp!r}")
    problem = _check_shape(instance.type, instance.data, instance.id)
    if problem:
        raise ValueError(problem)
    if instance.type not in (PacketType.EVENT, PacketType.ACK) and _has_binary(instance.data):
        raise ValueError(f"{instance.type.name} packets cannot carry binary data")


@attrs.frozen(slots=True)
class Packet:
    """One Socket.IO packet (logical: EVENT/ACK whether or not ``data`` holds bytes)."""

    type: PacketType = attrs.field(converter=_logical_type)
    nsp: str = DEFAULT_NAMESPACE
    data: Any = None
    id: int | None = attrs.field(default=None, validator=_check_packet)

    @property
    def binary(self) -> bool:
        return _has_binary(self.data)


def _trusted(kind: PacketType, nsp: str, data: Any, ack_id: int | None) -> Packet:
    """A Packet from values the decoder has already validated (skips the checks)."""
    packet = object.__new__(Packet)
    object.__setattr__(packet, "type", kind)
    object.__setattr__(packet, "nsp", nsp)
    object.__setattr__(packet, "data", data)
    object.__setattr__(packet, "id", ack_id)
    return packet


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_loads = json.JSONDecoder(parse_constant=_reject_constant).decode


def _deconstruct(data: Any, attachments: list[bytes]) -> Any:
    if isinstance(data, (bytes, bytearray, memoryview)):
        attachments.append(bytes(data))
        return {"_placeholder": True, "num": len(attachments) - 1}
    if isinstance(data, (list, tuple)):
        return [_deconstruct(item, attachments) for item in data]
    if isinstance(data, dict):
        return {key: _deconstruct(value, attachments) for key, value in data.items()}
    return data


def encode_packet(packet: Packet) -> list[str | bytes]:
    """The Engine.IO messages carrying ``packet``: one string, then any attachments."""
    return _encode(packet.type, packet.nsp, packet.data, packet.id)


_TYPE_DIGIT = {kind: str(int(kind)) for kind in PacketType}


def _encode(kind: PacketType, nsp: str, data: Any, ack_id: int | None) -> list[str | bytes]:
    prefix = "" if nsp == DEFAULT_NAMESPACE else nsp + ","
    if ack_id is not None:
        prefix += str(ack_id)
    if data is None:
        return [_TYPE_DIGIT[kind] + prefix]
    try:
        return [_TYPE_DIGIT[kind] + prefix + _dumps(data)]
    except TypeError as exc:
        # Binary payloads are the exception: find them only when JSON cannot encode.
        if kind not in (PacketType.EVENT, PacketType.ACK) or not _has_binary(data):
            raise SocketIOError(f"cannot encode packet data as JSON: {exc}") from exc
    except ValueError as exc:
        raise SocketIOError(f"cannot encode packet data as JSON: {exc}") from exc
    attachments: list[bytes] = []
    data = _deconstruct(data, attachments)
    head = f"{int(kind) + 3}{len(attachments)}-{prefix}"
    try:
        return [head + _dumps(data), *attachments]
    except (TypeError, ValueError) as exc:
        raise SocketIOError(f"cannot encode packet data as JSON: {exc}") from exc


@attrs.frozen
class _Partial:
    kind: PacketType
    nsp: str
    id: int | None
    data: Any
    expected: int
    attachments: list[bytes] = attrs.field(factory=list)


def _reconstruct(data: Any, attachments: list[bytes]) -> Any:
    if isinstance(data, list):
        return [_reconstruct(item, attachments) for item in data]
    if isinstance(data, dict):
        if data.get("_placeholder") is True and "num" in data:
            num = data["num"]
            if type(num) is not int or not 0 <= num < len(attachments):
                raise SocketIOError("illegal attachments: placeholder number out of range")
            return attachments[num]
        return {key: _reconstruct(value, attachments) for key, value in data.items()}
    return data


class Decoder:
    """Turns Engine.IO messages into :class:`Packet` objects.

    ``feed`` returns a packet when one is complete, ``None`` while a binary packet
    waits for attachments. After a :class:`SocketIOError` the decoder is reset; the
    caller should treat the connection as broken (the reference server closes it).
    """

    def __init__(self, *, max_attachments: int = 16) -> None:
        self.max_attachments = max_attachments
        self._partial: _Partial | None = None

    @property
    def waiting_for_attachments(self) -> bool:
        return self._partial is not None

    def feed(self, message: str | bytes | bytearray | memoryview) -> Packet | None:
        try:
            if isinstance(message, str):
                if self._partial is not None:
                    raise SocketIOError("got a text packet while waiting for binary attachments")
                return self._decode_text(message)
            if isinstance(message, (bytes, bytearray, memoryview)):
                return self._add_attachment(bytes(message))
            raise SocketIOError(f"a message is str or bytes, not {type(message).__name__}")
        except SocketIOError:
            self._partial = None
            raise

    def _add_attachment(self, blob: bytes) -> Packet | None:
        partial = self._partial
        if partial is None:
            raise SocketIOError("unexpected binary attachment")
        partial.attachments.append(blob)
        if len(partial.attachments) < partial.expected:
            return None
        self._partial = None
        data = _reconstruct(partial.data, partial.attachments)
        return _trusted(partial.kind, partial.nsp, data, partial.id)

    def _decode_text(self, text: str) -> Packet | None:
        if not text:
            raise SocketIOError("empty packet")
        code = "0123456".find(text[0])
        if code < 0:
            raise SocketIOError(f"unknown packet type {text[0]!r}")
        raw_kind = PacketType(code)
        i = 1
        n = len(text)
        attachments = 0
        if raw_kind in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK):
            dash = text.find("-", 1)
            count = text[1:dash] if dash > 0 else ""
            if not count.isascii() or not count.isdigit() or len(count) > 6:
                raise SocketIOError("illegal attachments count")
            attachments = int(count)
            if attachments > self.max_attachments:
                raise SocketIOError(f"more than {self.max_attachments} attachments")
            i = dash + 1
        nsp = DEFAULT_NAMESPACE
        if i < n and text[i] == "/":
            comma = text.find(",", i)
            end = n if comma < 0 else comma
            nsp = text[i:end]
            query = nsp.find("?")
            if query >= 0:
                nsp = nsp[:query]
            i = end + 1 if comma >= 0 else n
        ack_id = None
        j = i
        while j < n and "0" <= text[j] <= "9":
            j += 1
        if j > i:
            if j - i > _MAX_ID_DIGITS:
                raise SocketIOError("id is too long")
            ack_id = int(text[i:j])
            i = j
        data = None
        if i < n:
            try:
                data = _loads(text[i:])
            except (ValueError, RecursionError) as exc:
                raise SocketIOError(f"invalid JSON payload: {exc}") from None
        kind = _LOGICAL.get(raw_kind, raw_kind)
        problem = _check_shape(kind, data, ack_id)
        if problem:
            raise SocketIOError(f"invalid payload: {problem}")
        if kind is PacketType.EVENT and data is not None and data[0] in RESERVED_EVENTS:
            raise SocketIOError(f"invalid payload: {data[0]!r} is a reserved event name")
        if attachments:
            self._partial = _Partial(kind, nsp, ack_id, data, attachments)
            return None
        if raw_kind is not kind:
            # A binary packet with zero attachments: placeholders cannot be valid.
            data = _reconstruct(data, [])
        return _trusted(kind, nsp, data, ack_id)


# -- server connection state machine ------------------------------------------------


@attrs.frozen
class ConnectRequested:
    """The client asks to join ``nsp``; answer with accept() or refuse()."""

    nsp: str
    auth: dict[str, Any] | None


@attrs.frozen
class EventReceived:
    nsp: str
    name: str
    args: list[Any]
    ack_id: int | None  # answer with ServerConnection.ack(nsp, ack_id, [...]) when set


@attrs.frozen
class AckReceived:
    nsp: str
    id: int
    args: list[Any]


@attrs.frozen
class ClientDisconnected:
    nsp: str
    reason: str


@attrs.frozen
class PacketDropped:
    """A well-formed packet that does not apply now (e.g. for a namespace not joined)."""

    reason: str


ConnectionEvent = ConnectRequested | EventReceived | AckReceived | ClientDisconnected | PacketDropped


class _Nsp(enum.Enum):
    PENDING = "pending"
    CONNECTED = "connected"


class ServerConnection:
    """Socket.IO state of one client (one Engine.IO session).

    ``namespaces`` is the set the server serves; a CONNECT to any other is refused
    here with ``Invalid namespace``. Methods that answer the client queue Engine.IO
    messages; drain them with :meth:`take_outgoing` after each call.
    """

    def __init__(self, *, namespaces: Iterable[str] = (DEFAULT_NAMESPACE,), max_attachments: int = 16) -> None:
        self.namespaces = frozenset(namespaces)
        self._decoder = Decoder(max_attachments=max_attachments)
        self._nsps: dict[str, _Nsp] = {}
        self._sids: dict[str, str] = {}
        self._outbox: list[str | bytes] = []
        self._next_ack = 0
        self._pending_acks: set[tuple[str, int]] = set()

    # -- queries ------------------------------------------------------------------
    def is_connected(self, nsp: str = DEFAULT_NAMESPACE) -> bool:
        return self._nsps.get(nsp) is _Nsp.CONNECTED

    def sid(self, nsp: str = DEFAULT_NAMESPACE) -> str | None:
        return self._sids.get(nsp)

    @property
    def connected_namespaces(self) -> list[str]:
        return [nsp for nsp, state in self._nsps.items() if state is _Nsp.CONNECTED]

    @property
    def pending_acks(self) -> int:
        return len(self._pending_acks)

    def take_outgoing(self) -> list[str | bytes]:
        out, self._outbox = self._outbox, []
        return out

    # -- incoming -----------------------------------------------------------------
    def receive(self, message: str | bytes) -> list[ConnectionEvent]:
        """One Engine.IO message from the client. Raises :class:`SocketIOError` on a
        malformed or out-of-protocol packet; the caller should then close the session."""
        packet = self._decoder.feed(message)
        if packet is None:
            return []
        return self._on_packet(packet)

    def _on_packet(self, packet: Packet) -> list[ConnectionEvent]:
        kind, nsp = packet.type, packet.nsp
        state = self._nsps.get(nsp)
        if kind is PacketType.CONNECT:
            if state is not None:
                raise SocketIOError(f"second CONNECT to namespace {nsp!r}")
            if nsp not in self.namespaces:
                self._queue(Packet(PacketType.CONNECT_ERROR, nsp, {"message": "Invalid namespace"}))
                return [PacketDropped(f"CONNECT to unknown namespace {nsp!r} refused")]
            self._nsps[nsp] = _Nsp.PENDING
            return [ConnectRequested(nsp, packet.data)]
        if kind is PacketType.CONNECT_ERROR:
            raise SocketIOError("a client does not send CONNECT_ERROR")
        if state is not _Nsp.CONNECTED:
            return [PacketDropped(f"{kind.name} for namespace {nsp!r}, which is not connected")]
        if kind is PacketType.EVENT:
            return [EventReceived(nsp, packet.data[0], packet.data[1:], packet.id)]
        if kind is PacketType.ACK:
            key = (nsp, packet.id)
            if key not in self._pending_acks:
                return [PacketDropped(f"ACK {packet.id} matches no emitted event")]
            self._pending_acks.discard(key)
            return [AckReceived(nsp, key[1], packet.data)]
        # DISCONNECT
        self._forget(nsp)
        return [ClientDisconnected(nsp, "client namespace disconnect")]

    def _forget(self, nsp: str) -> None:
        self._nsps.pop(nsp, None)
        self._sids.pop(nsp, None)
        self._pending_acks = {k for k in self._pending_acks if k[0] != nsp}

    # -- answering ----------------------------------------------------------------
    def accept(self, nsp: str, sid: str) -> None:
        """Accept a pending CONNECT: the client learns its Socket.IO ``sid``."""
        if self._nsps.get(nsp) is not _Nsp.PENDING:
            raise SocketIOError(f"no pending CONNECT for namespace {nsp!r}")
        self._nsps[nsp] = _Nsp.CONNECTED
        self._sids[nsp] = sid
        self._queue(Packet(PacketType.CONNECT, nsp, {"sid": sid}))

    def refuse(self, nsp: str, message: str, data: Any = None) -> None:
        """Refuse a pending CONNECT; the client's ``connect_error`` gets ``message``."""
        if self._nsps.get(nsp) is not _Nsp.PENDING:
            raise SocketIOError(f"no pending CONNECT for namespace {nsp!r}")
        del self._nsps[nsp]
        body: dict[str, Any] = {"message": message}
        if data is not None:
            body["data"] = data
        self._queue(Packet(PacketType.CONNECT_ERROR, nsp, body))

    def emit(
        self,
        event: str,
        args: list[Any] | tuple[Any, ...] = (),
        *,
        nsp: str = DEFAULT_NAMESPACE,
        want_ack: bool = False,
    ) -> int | None:
        """Queue an event; returns the ack id to expect when ``want_ack``."""
        if not self.is_connected(nsp):
            raise SocketIOError(f"namespace {nsp!r} is not connected")
        if not isinstance(event, str) or event in RESERVED_EVENTS:
            raise SocketIOError(f"cannot emit event named {event!r}")
        ack_id = None
        if want_ack:
            ack_id = self._next_ack
            self._next_ack = (self._next_ack + 1) % (10**_MAX_ID_DIGITS)
            self._pending_acks.add((nsp, ack_id))
        self._outbox.extend(_encode(PacketType.EVENT, nsp, [event, *args], ack_id))
        return ack_id

    def ack(self, nsp: str, ack_id: int, args: list[Any] | tuple[Any, ...]) -> None:
        """Answer the client's event ``ack_id`` (its callback gets ``args``)."""
        if not self.is_connected(nsp):
            raise SocketIOError(f"namespace {nsp!r} is not connected")
        self._outbox.extend(_encode(PacketType.ACK, nsp, list(args), ack_id))

    def disconnect(self, nsp: str = DEFAULT_NAMESPACE) -> list[ConnectionEvent]:
        """Server-side namespace disconnect."""
        if nsp not in self._nsps:
            return []
        self._forget(nsp)
        self._queue(Packet(PacketType.DISCONNECT, nsp))
        return [ClientDisconnected(nsp, "server namespace disconnect")]

    def transport_closed(self, reason: str) -> list[ConnectionEvent]:
        """The Engine.IO session ended: every joined namespace is disconnected."""
        events: list[ConnectionEvent] = [
            ClientDisconnected(nsp, reason) for nsp, state in self._nsps.items() if state is _Nsp.CONNECTED
        ]
        self._nsps.clear()
        self._sids.clear()
        self._pending_acks.clear()
        return events

    def _queue(self, packet: Packet) -> None:
        self._outbox.extend(encode_packet(packet))
