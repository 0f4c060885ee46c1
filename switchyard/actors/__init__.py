"""Concrete actors, one module per concern.

``KINDS`` maps each short kind name used in manifests to ``"module:Class"``; the
runtime imports a module only when its kind is used.
"""

KINDS: dict[str, str] = {
    "echo": "switchyard.actors.echo:EchoActor",
    "status": "switchyard.actors.status:StatusActor",
    "rime_state": "switchyard.services.aipara.rime_state:RimeStateActor",
    "ai_stream": "switchyard.services.aipara.ai_stream:AiStreamActor",
    "tensor_session": "switchyard.services.tensor.zmq_session:TensorSessionActor",
    "socketio_bridge": "switchyard.services.robot.socketio_bridge:SocketIOBridgeActor",
    "robot_worker": "switchyard.services.robot.worker:RobotWorkerActor",
    "ipc_server": "switchyard.actors.ipc:IpcServerActor",
    "ipc_proxy": "switchyard.actors.ipc:IpcProxyActor",
    "inference": "switchyard.services.inference.service:InferenceActor",
    "inference_broker": "switchyard.services.inference.broker:InferenceBrokerActor",
    "inference_worker": "switchyard.services.inference.worker:InferenceWorkerActor",
    "inference_redis": "switchyard.services.inference.redis_worker:RedisQueueActor",
}
