"""Messages between the Socket.IO bridge and the robot worker actors.

* ``RobotRequest(command, payload)``: asked of the robot worker; ``command`` is
  ``update``, ``start``, ``process`` or ``stop`` and ``payload`` the client's event
  data. The reply is always an :func:`ack` dict ``{status, message, data}`` (errors
  included), ready to be the client's acknowledgement.
* ``Push(event, data)``: told to the bridge; emitted to the connected client as
  event ``event``. The worker pushes what user code passes to ``push_message`` and
  ``worker_crashed`` when its process dies outside a call.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["COMMANDS", "WORKER_CRASHED", "Push", "RobotRequest", "ack"]

COMMANDS = ("update", "start", "process", "stop")
WORKER_CRASHED = "worker_crashed"


@attrs.frozen
class RobotRequest:
    command: str
    payload: Any = None


@attrs.frozen
class Push:
    event: str
    data: Any = None


def ack(status: str, message: str, data: Any = None) -> dict[str, Any]:
    """The acknowledgement shape the robot front ends parse."""
    return {"status": status, "message": message, "data": data}
