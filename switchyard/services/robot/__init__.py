"""robot: the robot control backend.

Browsers (socket.io-client) reach ``SocketIOBridgeActor``; it forwards ``update``,
``start`` and ``process`` to ``RobotWorkerActor``, which installs the uploaded
project ZIP and runs its ``main.py`` in a separate worker process. Names resolve
lazily.
"""

from switchyard.runtime.lazy import lazy_exports

_EXPORTS = {
    "SocketIOBridgeActor": ".socketio_bridge",
    "SocketIOBridgeConfig": ".socketio_bridge",
    "RobotWorkerActor": ".worker",
    "RobotWorkerConfig": ".worker",
    "ZipLimits": ".project",
    "ProjectRejected": ".project",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
