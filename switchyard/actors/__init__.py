"""Concrete actors, one module per concern.

``KINDS`` maps each short kind name used in manifests to ``"module:Class"``; the
runtime imports a module only when its kind is used.
"""

KINDS: dict[str, str] = {
    "echo": "switchyard.actors.echo:EchoActor",
    "tensor_session": "switchyard.actors.tensor_session:TensorSessionActor",
    "socketio_bridge": "switchyard.actors.socketio_bridge:SocketIOBridgeActor",
    "robot_worker": "switchyard.actors.robot_worker:RobotWorkerActor",
}
