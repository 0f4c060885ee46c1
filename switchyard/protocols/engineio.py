"""Engine.IO protocol 4, server side, sans-IO.

Two parts:

* the packet codec: :func:`encode_packet` / :func:`decode_packet` for WebSocket frames
  and :func:`encode_payload` / :func:`decode_payload` for HTTP long-polling bodies
  (packets joined by the record separator ``\\x1e``, binary packets as ``b`` + base64);
* :class:`ServerSession`, the state machine of one client session: heartbeat (the
  server pings every ``ping_interval``, the client must pong within
  ``ping_timeout``), the outgoing queue, one long-poll at a time, and the
  polling -> WebSocket upgrade (``2probe`` / ``3probe``, a ``6`` noop to release the
  pending poll, then ``5`` on the new transport).

Nothing here does I/O or reads a clock: callers pass ``now`` (any monotonic seconds)
and move the bytes. Every decoding function raises only :class:`EngineIOError` on bad
input, whatever it is given.

Closing works like h11: a protocol violation by the client does not raise; the session
sets :attr:`ServerSession.state` to ``CLOSED`` and returns a :class:`SessionClosed`
event (with the reason) from the call that saw it, just as a client CLOSE or a ping
timeout does. :class:`EngineIOError` from a session method means "refuse this one
request" and leaves the session as it was.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections import deque
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qs

import attrs

__all__ = [
    "PROTOCOL_VERSION",
    "RECORD_SEPARATOR",
    "EngineIOError",
    "EngineRequest",
    "ErrorCode",
    "Handshake",
    "MessageReceived",
    "Packet",
    "PacketType",
    "ServerSession",
    "SessionClosed",
    "SessionEvent",
    "SessionState",
    "Transport",
    "UpgradeState",
    "decode_packet",
    "decode_payload",
    "encode_packet",
    "encode_payload",
    "error_body",
    "parse_request",
]

PROTOCOL_VERSION = 4
RECORD_SEPARATOR = "\x1e"


class ErrorCode(enum.IntEnum):
    """The error codes an Engine.IO server answers in an HTTP 400 JSON body."""

    UNKNOWN_TRANSPORT = 0
    UNKNOWN_SID = 1
    BAD_HANDSHAKE_METHOD = 2
    BAD_REQUEST = 3
    FORBIDDEN = 4
    UNSUPPORTED_PROTOCOL_VERSION = 5


_ERROR_MESSAGES = {
    ErrorCode.UNKNOWN_TRANSPORT: "Transport unknown",
    ErrorCode.UNKNOWN_SID: "Session ID unknown",
    ErrorCode.BAD_HANDSHAKE_METHOD: "Bad handshake method",
    ErrorCode.BAD_REQUEST: "Bad request",
    ErrorCode.FORBIDDEN: "Forbidden",
    ErrorCode.UNSUPPORTED_PROTOCOL_VERSION: "Unsupported protocol version",
}


class EngineIOError(ValueError):
    """Bad Engine.IO input. ``code`` is what to answer an HTTP client with."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code


def error_body(code: ErrorCode, detail: str | None = None) -> bytes:
    """The JSON body of an HTTP error answer, as the reference server writes it."""
    body: dict[str, object] = {"code": int(code), "message": _ERROR_MESSAGES[code]}
    if detail:
        body["context"] = {"detail": detail}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class PacketType(enum.IntEnum):
    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


def _check_data(instance: Packet, attribute: object, value: str | bytes) -> None:
    if isinstance(value, (bytes, bytearray, memoryview)):
        if instance.type is not PacketType.MESSAGE:
            raise ValueError("only MESSAGE packets may carry binary data")
    elif not isinstance(value, str):
        raise TypeError(f"packet data must be str or bytes, not {type(value).__name__}")


def _as_bytes(value: str | bytes | bytearray | memoryview) -> str | bytes:
    return value if type(value) is str else bytes(value) if isinstance(value, (bytearray, memoryview)) else value


def _as_type(value: int) -> PacketType:
    return value if type(value) is PacketType else PacketType(value)


@attrs.frozen(slots=True)
class Packet:
    """One Engine.IO packet. ``data`` is text, or bytes for a binary MESSAGE."""

    type: PacketType = attrs.field(converter=_as_type)
    data: str | bytes = attrs.field(default="", converter=_as_bytes, validator=_check_data)

    @property
    def binary(self) -> bool:
        return isinstance(self.data, bytes)


def _trusted(kind: PacketType, data: str | bytes) -> Packet:
    """A Packet from values already known to be valid (hot paths skip the checks)."""
    packet = object.__new__(Packet)
    object.__setattr__(packet, "type", kind)
    object.__setattr__(packet, "data", data)
    return packet


_DIGITS = "0123456789"
_TYPES = tuple(PacketType)
_TEXT_PREFIX = tuple(str(int(t)) for t in PacketType)


def encode_packet(packet: Packet) -> str | bytes:
    """The WebSocket frame for ``packet``: text ``<type><data>``, or raw bytes for binary."""
    if isinstance(packet.data, bytes):
        return packet.data
    return _TEXT_PREFIX[packet.type] + packet.data


def decode_packet(frame: str | bytes | bytearray | memoryview) -> Packet:
    """A packet from one WebSocket frame (text or binary)."""
    if isinstance(frame, (bytes, bytearray, memoryview)):
        return _trusted(PacketType.MESSAGE, bytes(frame))
    if not isinstance(frame, str):
        raise EngineIOError(f"a frame is str or bytes, not {type(frame).__name__}")
    if not frame:
        raise EngineIOError("empty packet")
    index = _DIGITS.find(frame[0])
    if index < 0 or index >= len(_TYPES):
        raise EngineIOError(f"unknown packet type {frame[0]!r}")
    return _trusted(_TYPES[index], str(frame[1:]))


def _encode_for_payload(packet: Packet) -> str:
    if isinstance(packet.data, bytes):
        return "b" + base64.b64encode(packet.data).decode("ascii")
    if RECORD_SEPARATOR in packet.data:
        raise ValueError("text packet data holds the record separator \\x1e; it cannot go in a payload")
    return _TEXT_PREFIX[packet.type] + packet.data


def encode_payload(packets: Iterable[Packet]) -> str:
    """An HTTP long-polling body holding ``packets`` (binary ones base64 encoded).

    Raises ``ValueError`` for text holding ``\\x1e`` (JSON never does: it escapes
    control characters).
    """
    return RECORD_SEPARATOR.join(_encode_for_payload(p) for p in packets)


def decode_payload(body: str | bytes, *, max_packets: int = 1024) -> list[Packet]:
    """The packets in one HTTP long-polling body (UTF-8 text).

    ``max_packets`` bounds the work one request can cause.
    """
    if isinstance(body, (bytes, bytearray, memoryview)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EngineIOError(f"payload is not UTF-8 (byte {exc.start})") from None
    if not isinstance(body, str):
        raise EngineIOError(f"a payload is str or bytes, not {type(body).__name__}")
    if not body:
        raise EngineIOError("empty payload")
    parts = body.split(RECORD_SEPARATOR, max_packets)
    if len(parts) > max_packets:
        raise EngineIOError(f"more than {max_packets} packets in one payload")
    packets = []
    for part in parts:
        if part[:1] == "b":
            try:
                data = base64.b64decode(part[1:], validate=True)
            except (binascii.Error, ValueError):
                raise EngineIOError("invalid base64 in a binary packet") from None
            packets.append(Packet(PacketType.MESSAGE, data))
        else:
            packets.append(decode_packet(part))
    return packets


@attrs.frozen
class Handshake:
    """The data of the OPEN packet. Intervals in milliseconds, as on the wire."""

    sid: str
    upgrades: tuple[str, ...]
    ping_interval: int
    ping_timeout: int
    max_payload: int

    def to_packet(self) -> Packet:
        body = {
            "sid": self.sid,
            "upgrades": list(self.upgrades),
            "pingInterval": self.ping_interval,
            "pingTimeout": self.ping_timeout,
            "maxPayload": self.max_payload,
        }
        return Packet(PacketType.OPEN, json.dumps(body, separators=(",", ":")))


class Transport(enum.Enum):
    POLLING = "polling"
    WEBSOCKET = "websocket"


@attrs.frozen
class EngineRequest:
    """What an HTTP request to the Engine.IO path asks for."""

    transport: Transport
    sid: str | None


def parse_request(query: str | Mapping[str, str]) -> EngineRequest:
    """Validate the ``EIO``, ``transport`` and ``sid`` query parameters.

    ``query`` is the raw query string (no ``?``) or an already parsed mapping.
    """
    if isinstance(query, str):
        parsed = parse_qs(query, keep_blank_values=True)
        params = {k: v[0] for k, v in parsed.items()}
    else:
        params = dict(query)
    if params.get("EIO") != str(PROTOCOL_VERSION):
        raise EngineIOError(
            f"EIO={params.get('EIO')!r}; only protocol {PROTOCOL_VERSION} is served",
            ErrorCode.UNSUPPORTED_PROTOCOL_VERSION,
        )
    try:
        transport = Transport(params.get("transport", ""))
    except ValueError:
        raise EngineIOError(f"transport={params.get('transport')!r}", ErrorCode.UNKNOWN_TRANSPORT) from None
    sid = params.get("sid") or None
    return EngineRequest(transport, sid)


class SessionState(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"  # a CLOSE packet is queued; closed once a transport takes it
    CLOSED = "closed"


class UpgradeState(enum.Enum):
    NONE = "none"
    PROBING = "probing"  # 3probe answered on the new transport; polls get NOOP
    DONE = "done"


@attrs.frozen
class MessageReceived:
    data: str | bytes


@attrs.frozen
class SessionClosed:
    reason: str


SessionEvent = MessageReceived | SessionClosed


def _message(data: str | bytes | bytearray | memoryview) -> Packet:
    if type(data) is str or type(data) is bytes:
        return _trusted(PacketType.MESSAGE, data)
    return Packet(PacketType.MESSAGE, data)  # validates (and copies views)


class ServerSession:
    """One Engine.IO session as the server sees it.

    Feed it what the client sent (:meth:`receive`, and during an upgrade
    :meth:`receive_probe` / :meth:`receive_upgrade`), ask it what to send
    (:meth:`take_outgoing`), and call :meth:`tick` by :meth:`next_deadline` so it can
    ping and notice a silent client. Times are seconds on the caller's monotonic clock.
    Once :attr:`state` is ``CLOSED`` the session accepts nothing more.
    """

    def __init__(
        self,
        sid: str,
        transport: Transport,
        *,
        now: float,
        ping_interval: float = 25.0,
        ping_timeout: float = 20.0,
        max_payload: int = 1_000_000,
        upgrades: tuple[Transport, ...] = (Transport.WEBSOCKET,),
    ) -> None:
        self.sid = sid
        self.transport = transport
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_payload = max_payload
        self.state = SessionState.OPEN
        self.upgrade = UpgradeState.NONE if transport is Transport.POLLING else UpgradeState.DONE
        self.close_reason: str | None = None
        self._upgrades = tuple(u for u in upgrades if u is not transport)
        self._outbox: deque[Packet] = deque()
        self._next_ping_at = now + ping_interval
        self._ping_sent_at: float | None = None
        self._polling = False

    # -- handshake ---------------------------------------------------------------
    def handshake(self) -> Handshake:
        return Handshake(
            sid=self.sid,
            upgrades=tuple(u.value for u in self._upgrades),
            ping_interval=int(self.ping_interval * 1000),
            ping_timeout=int(self.ping_timeout * 1000),
            max_payload=self.max_payload,
        )

    # -- outgoing ----------------------------------------------------------------
    def send(self, data: str | bytes) -> None:
        """Queue one MESSAGE packet (str or bytes). Ignored once the session is closing."""
        if self.state is SessionState.OPEN:
            self._outbox.append(_message(data))

    def send_many(self, items: Iterable[str | bytes]) -> None:
        if self.state is SessionState.OPEN:
            self._outbox.extend(_message(d) for d in items)

    def close(self, reason: str = "server close") -> list[SessionEvent]:
        """Start a server-side close: a CLOSE packet goes out with the queue."""
        if self.state is not SessionState.OPEN:
            return []
        self.state = SessionState.CLOSING
        self.close_reason = reason
        self._outbox.append(Packet(PacketType.CLOSE))
        return [SessionClosed(reason)]

    def abort(self, reason: str) -> list[SessionEvent]:
        """Close now, dropping anything queued (the transport is gone)."""
        if self.state is SessionState.CLOSED:
            return []
        already_closing = self.state is SessionState.CLOSING
        self.state = SessionState.CLOSED
        self._outbox.clear()
        if already_closing:
            return []
        self.close_reason = reason
        return [SessionClosed(reason)]

    @property
    def pending(self) -> int:
        """Number of queued packets."""
        return len(self._outbox)

    def take_outgoing(self, transport: Transport) -> list[Packet]:
        """Packets ``transport`` should write now (possibly none).

        While an upgrade is being probed or done, a long-poll gets a single NOOP so
        the client can pause polling; the queue is kept for the WebSocket. When the
        taken packets include the CLOSE packet, the session becomes ``CLOSED``.
        """
        if transport is Transport.POLLING and self.upgrade is not UpgradeState.NONE:
            return [Packet(PacketType.NOOP)]
        if transport is not self.transport:
            return []
        packets = list(self._outbox)
        self._outbox.clear()
        if self.state is SessionState.CLOSING and packets and packets[-1].type is PacketType.CLOSE:
            self.state = SessionState.CLOSED
        return packets

    def has_outgoing(self, transport: Transport) -> bool:
        """Whether :meth:`take_outgoing` would give ``transport`` something now."""
        if transport is Transport.POLLING and self.upgrade is not UpgradeState.NONE:
            return True
        return transport is self.transport and bool(self._outbox)

    # -- long-polling GET bookkeeping ----------------------------------------------
    def begin_poll(self) -> list[SessionEvent]:
        """A GET arrived.

        A second concurrent GET is a protocol violation: the session closes and the
        returned events say so (the caller answers that GET with an error). A GET on
        an upgraded session raises :class:`EngineIOError` and changes nothing.
        """
        if self.transport is not Transport.POLLING and self.upgrade is UpgradeState.DONE:
            raise EngineIOError("session was upgraded to websocket", ErrorCode.BAD_REQUEST)
        if self._polling:
            return self.abort("overlapping poll requests")
        if self.state is SessionState.CLOSED:
            return []
        self._polling = True
        return []

    def end_poll(self) -> None:
        self._polling = False

    @property
    def polling(self) -> bool:
        return self._polling

    # -- incoming ----------------------------------------------------------------
    def receive(self, packet: Packet, *, now: float) -> list[SessionEvent]:
        """A packet from the client on the active transport."""
        if self.state is SessionState.CLOSED:
            return []
        kind = packet.type
        if kind is PacketType.MESSAGE:
            if self.state is SessionState.OPEN:
                return [MessageReceived(packet.data)]
            return []
        if kind is PacketType.PONG:
            self._ping_sent_at = None
            self._next_ping_at = now + self.ping_interval
            return []
        if kind is PacketType.CLOSE:
            return self.abort("client close")
        if kind is PacketType.NOOP:
            return []
        if kind is PacketType.PING:
            # Protocol 3 clients ping; a v4 server does not expect it. Be lenient.
            if self.state is SessionState.OPEN:
                self._outbox.append(Packet(PacketType.PONG, packet.data))
            return []
        # OPEN from a client, or UPGRADE outside an upgrade: protocol violation.
        return self.abort(f"unexpected {kind.name} packet from the client")

    def receive_messages(self, packets: Iterable[Packet], *, now: float) -> list[SessionEvent]:
        """:meth:`receive` for each packet in order; stops at the one that closes."""
        events: list[SessionEvent] = []
        for packet in packets:
            events.extend(self.receive(packet, now=now))
            if self.state is SessionState.CLOSED:
                break
        return events

    def receive_probe(self, packet: Packet) -> Packet:
        """The first frame on an upgrading WebSocket; returns the ``3probe`` answer."""
        if self.state is not SessionState.OPEN:
            raise EngineIOError("session is not open", ErrorCode.BAD_REQUEST)
        if self.transport is not Transport.POLLING or self.upgrade is not UpgradeState.NONE:
            raise EngineIOError("session is already upgrading or upgraded", ErrorCode.BAD_REQUEST)
        if packet.type is not PacketType.PING or packet.data != "probe":
            raise EngineIOError("expected a 2probe packet to start the upgrade", ErrorCode.BAD_REQUEST)
        self.upgrade = UpgradeState.PROBING
        return Packet(PacketType.PONG, "probe")

    def receive_upgrade(self, packet: Packet) -> None:
        """The UPGRADE packet on the probed WebSocket: it becomes the transport."""
        if self.upgrade is not UpgradeState.PROBING:
            raise EngineIOError("no upgrade is being probed", ErrorCode.BAD_REQUEST)
        if packet.type is not PacketType.UPGRADE:
            self.upgrade = UpgradeState.NONE
            raise EngineIOError(f"expected an UPGRADE packet, got {packet.type.name}", ErrorCode.BAD_REQUEST)
        self.upgrade = UpgradeState.DONE
        self.transport = Transport.WEBSOCKET

    def cancel_upgrade(self) -> None:
        """The probing WebSocket went away before ``5``: polling continues."""
        if self.upgrade is UpgradeState.PROBING:
            self.upgrade = UpgradeState.NONE

    # -- timers ------------------------------------------------------------------
    def next_deadline(self) -> float:
        """When :meth:`tick` next has something to do (``inf`` once closed)."""
        if self.state is SessionState.CLOSED:
            return float("inf")
        if self._ping_sent_at is not None:
            return self._ping_sent_at + self.ping_timeout
        return self._next_ping_at

    def tick(self, now: float) -> list[SessionEvent]:
        """Send a due PING, or close the session if the last one went unanswered."""
        if self.state is not SessionState.OPEN:
            return []
        if self._ping_sent_at is not None:
            if now >= self._ping_sent_at + self.ping_timeout:
                return self.abort("ping timeout")
            return []
        if now >= self._next_ping_at:
            self._ping_sent_at = now
            self._outbox.append(Packet(PacketType.PING))
        return []
