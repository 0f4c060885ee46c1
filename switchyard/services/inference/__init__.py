"""inference: the meeting system's ONNX Runtime worker.

``InferenceActor`` serves JSON (and msgpack) tasks on a ZeroMQ ROUTER for the Go
service's REQ sockets and publishes ``ai_events``; ``InferenceBrokerActor`` and
``InferenceWorkerActor`` scale it out over processes.
"""
