"""Binary fast path of the inference protocol, for clients that already hold tensors.

Request: two frames, ``[header, tensor]``.

* ``header`` is a small msgpack map::

      {"task_id": "t1", "task_type": "digit_recognition", "model": "digits",
       "dtype": "float32", "shape": [32, 64], "params": {"k": "v"}}

  ``task_id``, ``dtype`` and ``shape`` are required, and at least one of
  ``task_type`` / ``model`` (a model name or a ``model_path`` as in the JSON form).
  ``shape[0]`` is the number of samples (rows); the rest is the per-sample shape.
  ``params`` is optional, strings only, with the same meaning as in the JSON form.
* ``tensor`` holds the raw little-endian C-order elements, exactly
  ``prod(shape) * itemsize`` bytes. The server reads it in place (``copy=False``).

Reply: one msgpack frame with the JSON reply's five keys; ``result`` is
``{"results": [<one result per row>]}`` on success.

A JSON request is always a single frame, so the frame count tells the forms apart.
Parsing raises only :class:`~switchyard.services.inference.protocol.TaskError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from switchyard.protocols.codec import CodecError, msgpack_codec
from switchyard.services.inference.protocol import MAX_TASK_ID_LENGTH, TaskError, TaskReply, encode_reply
from switchyard.services.inference.tensors import DTYPES, TensorError, parse_shape

__all__ = [
    "MAX_HEADER_BYTES",
    "TensorRequest",
    "encode_binary_reply",
    "encode_binary_request",
    "parse_binary_reply",
    "parse_binary_request",
]

MAX_HEADER_BYTES = 64 << 10


@attrs.frozen
class TensorRequest:
    """A validated binary task. ``data`` is a view of the tensor frame, not a copy."""

    task_id: str
    task_type: str
    model: str
    dtype: str
    shape: tuple[int, ...]
    data: memoryview = attrs.field(eq=False, repr=lambda v: f"<{v.nbytes} bytes>")
    params: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape[1:]


def _str_field(header: Mapping[Any, Any], key: str, task_id: str, *, required: bool) -> str:
    value = header.get(key)
    if value is None:
        if required:
            raise TaskError(f"header.{key} is missing", task_id)
        return ""
    if not isinstance(value, str):
        raise TaskError(f"header.{key} must be a string, not {type(value).__name__}", task_id)
    return value


def parse_binary_request(frames: Sequence[bytes | bytearray | memoryview], *, max_input_bytes: int) -> TensorRequest:
    """Validate ``[header, tensor]`` frames into a :class:`TensorRequest`."""
    if len(frames) != 2:
        raise TaskError(f"a binary request has 2 frames (header, tensor), not {len(frames)}")
    head = memoryview(frames[0])
    if head.nbytes > MAX_HEADER_BYTES:
        raise TaskError(f"header is larger than {MAX_HEADER_BYTES} bytes")
    try:
        header = msgpack_codec.decode(head)
    except CodecError as exc:
        raise TaskError(f"header is not msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise TaskError("header must be a msgpack map")
    raw_id = header.get("task_id")
    task_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= MAX_TASK_ID_LENGTH else ""
    if not task_id and raw_id != "":
        raise TaskError(f"header.task_id must be a string of at most {MAX_TASK_ID_LENGTH} characters")
    task_type = _str_field(header, "task_type", task_id, required=False)
    try:
        model = _str_field(header, "model", task_id, required=False)
        if not task_type and not model:
            raise TaskError("header needs a task_type or a model", task_id)
        dtype = _str_field(header, "dtype", task_id, required=True)
        if dtype not in DTYPES:
            raise TaskError(f"header.dtype {dtype!r} is not one of {', '.join(DTYPES)}", task_id)
        raw_shape = header.get("shape")
        if not isinstance(raw_shape, list) or len(raw_shape) < 2:
            raise TaskError("header.shape must be a list [rows, *sample_shape]", task_id)
        try:
            shape = parse_shape(raw_shape)
        except TensorError as exc:
            raise TaskError(f"header.{exc}", task_id) from None
        params = header.get("params") or {}
        if not isinstance(params, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in params.items()
        ):
            raise TaskError("header.params must be a map of strings to strings", task_id)
        data = memoryview(frames[1]).cast("B")
        expected = math.prod(shape) * DTYPES[dtype].itemsize
        if expected > max_input_bytes:
            raise TaskError(f"tensor of {expected} bytes exceeds the limit of {max_input_bytes} bytes", task_id)
        if data.nbytes != expected:
            raise TaskError(
                f"tensor frame has {data.nbytes} bytes; shape {list(shape)} of {dtype} needs {expected}",
                task_id,
            )
    except TaskError as exc:
        exc.task_type = task_type
        raise
    return TensorRequest(
        task_id=task_id, task_type=task_type, model=model, dtype=dtype, shape=shape, data=data, params=params
    )


def encode_binary_request(
    task_id: str,
    tensor: Any,
    *,
    task_type: str = "",
    model: str = "",
    params: Mapping[str, str] | None = None,
) -> list[bytes | memoryview]:
    """Client side: frames for a numpy array ``tensor`` of shape ``[rows, *sample]``.

    The tensor frame is a view of the array's buffer (made C-contiguous little-endian
    first if it is not), suitable for ``send_multipart(copy=False)``.
    """
    import numpy as np

    array = np.ascontiguousarray(tensor)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    names = {dt: name for name, dt in DTYPES.items()}
    dtype = names.get(array.dtype.newbyteorder("<"))
    if dtype is None:
        raise TaskError(f"dtype {array.dtype} is not one of {', '.join(DTYPES)}", task_id)
    header: dict[str, Any] = {"task_id": task_id, "dtype": dtype, "shape": list(array.shape)}
    if task_type:
        header["task_type"] = task_type
    if model:
        header["model"] = model
    if params:
        header["params"] = dict(params)
    return [msgpack_codec.encode(header), memoryview(array.data).cast("B")]


def encode_binary_reply(reply: TaskReply) -> bytes:
    """The reply frame (msgpack); a result msgpack cannot hold becomes an error reply."""
    return encode_reply(reply, msgpack_codec)


def parse_binary_reply(frame: bytes | bytearray | memoryview) -> TaskReply:
    """Client side: the reply frame back into a :class:`TaskReply`. Raises :class:`TaskError`."""
    try:
        obj = msgpack_codec.decode(frame)
    except CodecError as exc:
        raise TaskError(f"reply is not msgpack: {exc}") from None
    if not isinstance(obj, dict) or obj.get("status") not in ("success", "error"):
        raise TaskError("reply must be a map with status 'success' or 'error'")
    raw_id = obj.get("task_id")
    task_id = raw_id if isinstance(raw_id, str) else ""
    result = obj.get("result") or {}
    error = obj.get("error") or ""
    latency = obj.get("latency", 0)
    if not isinstance(result, dict) or not isinstance(error, str) or not isinstance(latency, int):
        raise TaskError("reply fields have the wrong types", task_id)
    return TaskReply(task_id=task_id, status=obj["status"], result=result, error=error, latency=latency)
