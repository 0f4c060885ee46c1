"""inference: the meeting system's ONNX Runtime worker.

``InferenceActor`` serves JSON (and msgpack) tasks on a ZeroMQ ROUTER for the Go
service's REQ sockets and publishes ``ai_events``; ``InferenceBrokerActor`` and
``InferenceWorkerActor`` scale it out over processes. Names resolve lazily, so
importing the package does not load onnxruntime.
"""

from switchyard.runtime.lazy import lazy_exports

_EXPORTS = {
    "InferenceActor": ".service",
    "InferenceConfig": ".service",
    "InferenceBrokerActor": ".broker",
    "InferenceBrokerConfig": ".broker",
    "InferenceWorkerActor": ".worker",
    "InferenceWorkerConfig": ".worker",
    "ModelRegistry": ".models",
    "ModelError": ".models",
    "TaskRequest": ".protocol",
    "TaskReply": ".protocol",
    "TaskError": ".protocol",
    "parse_request": ".protocol",
    "encode_request": ".protocol",
    "parse_reply": ".protocol",
    "encode_binary_request": ".binary",
    "parse_binary_reply": ".binary",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
