"""Messages between the Socket.IO bridge and the robot worker actors.

* ``RobotRequest(command, payload)``: asked of the robot worker; ``command`` is
  ``update``, ``start``, ``process`` or ``stop`` and ``payload`` the client's event
  data. The reply is always an :func:`ack` dict ``{status, message, data}`` (errors
  included), ready to be the client's acknowledgement.
  A request may instead be *told* with a :class:`Reply` as ``reply_to``: the worker
  then resolves it with that same ack (also when it fails or stops while handling
  the request), and skips a request whose reply was abandoned before it started.
* ``Push(event, data)``: told to the bridge; emitted to the connected client as
  event ``event``. The worker pushes what user code passes to ``push_message`` and
  ``worker_crashed`` when its process dies outside a call.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

__all__ = ["COMMANDS", "WORKER_CRASHED", "Push", "Reply", "RobotRequest", "ack"]

COMMANDS = ("update", "start", "process", "stop")
WORKER_CRASHED = "worker_crashed"


class Reply:
    """A one-shot answer slot for a told :class:`RobotRequest`.

    The worker calls :meth:`resolve` (the first call wins, later ones are ignored);
    the asker waits with :meth:`wait` and calls :meth:`abandon` once nobody waits any
    more, so a request not yet started is skipped.
    """

    __slots__ = ("_done", "abandoned", "value")

    def __init__(self) -> None:
        self._done = trio.Event()
        self.value: dict[str, Any] | None = None
        self.abandoned = False

    def resolve(self, value: dict[str, Any]) -> None:
        if not self._done.is_set():
            self.value = value
            self._done.set()

    @property
    def resolved(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> dict[str, Any] | None:
        """The resolved value (waits until there is one)."""
        await self._done.wait()
        return self.value

    def abandon(self) -> None:
        self.abandoned = True


@attrs.frozen
class RobotRequest:
    command: str
    payload: Any = None
    reply_to: Reply | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class Push:
    event: str
    data: Any = None


def ack(status: str, message: str, data: Any = None) -> dict[str, Any]:
    """The acknowledgement shape the robot front ends parse."""
    return {"status": status, "message": message, "data": data}
