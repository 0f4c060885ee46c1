"""Concrete actors, one module per concern.

``KINDS`` maps each short kind name used in manifests to ``"module:Class"``; the
runtime imports a module only when its kind is used.
"""

KINDS: dict[str, str] = {
    "echo": "switchyard.actors.echo:EchoActor",
    "rime_state": "switchyard.actors.rime_state:RimeStateActor",
    "ai_stream": "switchyard.actors.ai_stream:AiStreamActor",
    "tensor_session": "switchyard.actors.tensor_session:TensorSessionActor",
    "socketio_bridge": "switchyard.actors.socketio_bridge:SocketIOBridgeActor",
    "robot_worker": "switchyard.actors.robot_worker:RobotWorkerActor",
    "ipc_server": "switchyard.actors.ipc_bridge:IpcServerActor",
    "ipc_proxy": "switchyard.actors.ipc_bridge:IpcProxyActor",
    "inference": "switchyard.actors.inference:InferenceActor",
    "inference_broker": "switchyard.actors.inference_broker:InferenceBrokerActor",
    "inference_worker": "switchyard.actors.inference_worker:InferenceWorkerActor",
}
