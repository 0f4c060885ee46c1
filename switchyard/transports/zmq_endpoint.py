"""What a ZeroMQ bridge serves: an endpoint address and its limits.

:class:`EndpointLimits` is the ``[actor.config.limits]`` table of an actor that owns a
bridge; :class:`EndpointConfig` is the flat value a bridge
(:mod:`switchyard.transports.zmq_bridges`) runs with, built from an actor's config by
:meth:`EndpointConfig.from_config`. Both are re-exported by ``zmq_bridges``.
"""

from __future__ import annotations

from typing import Any

import attrs

from switchyard.runtime.config import non_negative, positive
from switchyard.transports.zmq import SocketOptions

__all__ = ["DEFAULT_HARD_MESSAGE_SIZE", "LIMIT_KEYS_MOVED", "EndpointConfig", "EndpointLimits"]


#: The hard message limit when none is configured: big enough that an honest peer's
#: oversized request (a 100 MB inference task, a multi-MiB Rime frame) still gets its
#: error reply, small enough that one message cannot take the server's memory.
DEFAULT_HARD_MESSAGE_SIZE = 128 << 20


@attrs.frozen
class EndpointLimits:
    """An endpoint's limits: the ``limits`` table of an actor's config
    (``[actor.config.limits]``), beside its ``endpoint`` address. Each field means what
    the same field of :class:`EndpointConfig` means; an actor gives its own defaults
    (``attrs.field(factory=lambda: EndpointLimits(max_message_size=65536))``) and a
    manifest's table changes only the keys it names.
    """

    sndhwm: int = attrs.field(default=1000, validator=non_negative)
    rcvhwm: int = attrs.field(default=1000, validator=non_negative)
    linger_ms: int = 0
    max_message_size: int = attrs.field(default=1 << 20, validator=positive)
    hard_limit_factor: int = attrs.field(default=16, validator=positive)
    hard_message_size: int = attrs.field(default=0, validator=non_negative)
    request_timeout: float = attrs.field(default=0.0, validator=non_negative)
    send_timeout: float = attrs.field(default=5.0, validator=non_negative)
    max_concurrent: int = attrs.field(default=1024, validator=positive)


#: ``renamed_keys`` for an actor config whose limits moved from flat keys
#: (``max_message_size = ...``) into its ``limits`` table: each old key still works,
#: with one deprecation warning line.
LIMIT_KEYS_MOVED: dict[str, str] = {f.name: f"limits.{f.name}" for f in attrs.fields(EndpointLimits)}


@attrs.frozen
class EndpointConfig:
    """What a bridge serves: the address and its limits, flat (build it from an actor's
    config with :meth:`from_config`).

    Two size limits, both in bytes:

    * ``max_message_size`` (the soft limit) is checked by the bridge: a bigger request
      still gets exactly one reply, the handler's ``error_reply`` for
      :class:`MessageTooLarge`, and is never parsed.
    * ``hard_message_size`` is libzmq's ``MAXMSGSIZE``: a peer sending a message above
      it is *disconnected by libzmq* without any reply (a REQ client then times out and
      reconnects). 0 means ``max(hard_limit_factor * max_message_size, DEFAULT_HARD_MESSAGE_SIZE)``
      (128 MiB with the defaults). A message between the two limits is held in memory
      once while it is answered.

    ``request_timeout`` (seconds, 0 = none) bounds each handler.

    Memory per peer that does not read is bounded by libzmq: at most ``sndhwm`` reply
    messages wait in its queue (plus the kernel's socket buffers); a reply that finds
    the queue full waits up to ``send_timeout`` and is then dropped (counted in
    ``stats["send_timeouts"]``). Other peers' replies never wait behind it.
    """

    endpoint: str
    sndhwm: int = 1000
    rcvhwm: int = 1000
    linger_ms: int = 0
    max_message_size: int = 1 << 20
    hard_limit_factor: int = 16
    hard_message_size: int = 0
    request_timeout: float = 0.0
    #: Seconds a reply may wait for room in its peer's queue (SNDHWM messages) before
    #: it is dropped and the handler gets :class:`PeerStuck`.
    send_timeout: float = 5.0
    max_concurrent: int = 1024
    socket_extra: dict[str, Any] = attrs.Factory(dict)

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> EndpointConfig:
        """An ``EndpointConfig`` from an actor config with an ``endpoint`` address and a
        ``limits`` table (:class:`EndpointLimits`); a config that has the limits as flat
        keys of the same names (``sndhwm``, ``max_message_size``, ...) works too. Keys
        it lacks keep their defaults; ``overrides`` win.
        """
        sources = [config]
        limits = getattr(config, "limits", None)
        if isinstance(limits, EndpointLimits):
            sources.insert(0, limits)
        values: dict[str, Any] = {}
        for f in attrs.fields(cls):
            for source in sources:
                if hasattr(source, f.name):
                    values[f.name] = getattr(source, f.name)
                    break
        values.update(overrides)
        return cls(**values)

    @property
    def hard_limit(self) -> int:
        """The ``MAXMSGSIZE`` applied to the socket (-1: none, when there is no soft limit)."""
        if self.hard_message_size > 0:
            return max(self.hard_message_size, self.max_message_size)
        if self.max_message_size <= 0:
            return -1
        return max(self.max_message_size * self.hard_limit_factor, DEFAULT_HARD_MESSAGE_SIZE)

    def socket_options(self, **overrides: Any) -> SocketOptions:
        hard = self.hard_limit
        fields: dict[str, Any] = dict(
            sndhwm=self.sndhwm,
            rcvhwm=self.rcvhwm,
            linger_ms=self.linger_ms,
            max_message_size=hard,
            extra=dict(self.socket_extra),
        )
        fields.update(overrides)
        return SocketOptions(**fields)
