"""The one codec layer: JSON and msgpack, with one error type.

Every transport that carries structured bodies goes through a :class:`Codec`, so
encoding rules live in one place:

* JSON is UTF-8 with non-ASCII kept as is (``ensure_ascii=False``), compact
  separators, and rejects NaN/Infinity on output (peers in C++ and Go choke on them).
  Encoding goes through orjson (about 10x faster than the stdlib encoder here),
  falling back to the stdlib encoder for anything orjson would write differently
  in meaning (NaN/Infinity, which it writes as ``null``; integers over 64 bits;
  non-string keys; subclasses, dataclasses and datetimes, which the stdlib refuses
  or writes by its own rules); so what encodes, and the value it decodes back to,
  is the stdlib's, except that plain enums and UUIDs (refused by the stdlib) encode
  as their values. Floats are written by the shortest round-trip rule either way;
  orjson writes an exponent without a leading zero (``1e-6``, as Go does) where
  the stdlib writes ``1e-06``. Decoding is the stdlib's (orjson would turn
  integers over 64 bits into floats).
* msgpack uses the ``bin`` type for bytes and ``str`` for text (``use_bin_type``),
  and decodes maps with non-string keys only when asked.

Decoding never raises anything but :class:`CodecError` for bad input, whatever the
bytes, so callers can turn it into a reply in their peer's format.

Both codecs take ``max_buffer_size``: with a positive value, :meth:`~Codec.decode`
refuses (``CodecError`` naming both sizes) any input longer than that many bytes
before decoding anything, so a codec handed to untrusted input bounds the work and
memory one decode may cost. 0 (the default of the shared ``json_codec`` and
``msgpack_codec``) means no limit of its own: the transports' frame limits apply.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

import msgpack
import orjson

__all__ = ["Codec", "CodecError", "JsonCodec", "MsgpackCodec", "get_codec", "json_codec", "msgpack_codec"]


class CodecError(ValueError):
    """Bytes that do not decode, or an object that does not encode."""


class Codec(Protocol):
    name: str

    def encode(self, obj: Any) -> bytes: ...

    def decode(self, data: bytes | bytearray | memoryview) -> Any: ...


def _check_limit(max_buffer_size: int) -> int:
    if isinstance(max_buffer_size, bool) or not isinstance(max_buffer_size, int) or max_buffer_size < 0:
        raise ValueError(f"max_buffer_size must be an integer >= 0, got {max_buffer_size!r}")
    return max_buffer_size


def _check_size(codec: JsonCodec | MsgpackCodec, data: bytes | bytearray | memoryview) -> None:
    limit = codec.max_buffer_size
    if limit and len(data) > limit:
        raise CodecError(f"{codec.name} input of {len(data)} bytes exceeds max_buffer_size {limit}")


#: orjson refuses (so the stdlib decides) what the stdlib encoder writes by other rules.
_ORJSON_STRICT = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


class JsonCodec:
    """UTF-8 JSON, non-ASCII kept, compact."""

    name = "json"

    def __init__(self, *, max_buffer_size: int = 0) -> None:
        self.max_buffer_size = _check_limit(max_buffer_size)
        self._encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        self._decoder = json.JSONDecoder()
        # The decoder's own scanner (typeshed does not declare the attribute).
        self._scan_once: Callable[[str, int], tuple[Any, int]] = self._decoder.scan_once  # type: ignore[attr-defined]

    def encode(self, obj: Any) -> bytes:
        try:
            fast = orjson.dumps(obj, option=_ORJSON_STRICT)
        except TypeError:  # orjson.JSONEncodeError too: the stdlib decides (and words the error)
            pass
        else:
            if b"null" not in fast:  # orjson writes NaN and Infinity as null: only then ask the stdlib
                return fast
        try:
            return self._encoder.encode(obj).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise CodecError(f"cannot encode as JSON: {exc}") from exc

    def decode(self, data: bytes | bytearray | memoryview) -> Any:
        _check_size(self, data)
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CodecError(f"not UTF-8 at byte {exc.start}") from exc
        # Fast path for a document with nothing around it (what every encoder here
        # writes): one scan, none of decode()'s whitespace matching. Anything else,
        # errors included, takes the full path, which words the errors.
        try:
            obj, end = self._scan_once(text, 0)
            if end == len(text):
                return obj
        except Exception:  # the full path below raises the real error
            pass
        try:
            return self._decoder.decode(text)
        except json.JSONDecodeError as exc:
            raise CodecError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
        except RecursionError as exc:
            raise CodecError("invalid JSON: nested too deeply") from exc
        except ValueError as exc:  # e.g. an integer longer than Python's digit limit
            raise CodecError(f"invalid JSON: {exc}") from exc


class MsgpackCodec:
    """msgpack with bin/str distinguished."""

    name = "msgpack"

    def __init__(self, *, max_buffer_size: int = 0) -> None:
        self.max_buffer_size = _check_limit(max_buffer_size)

    def encode(self, obj: Any) -> bytes:
        try:
            return msgpack.packb(obj, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise CodecError(f"cannot encode as msgpack: {exc}") from exc

    def decode(self, data: bytes | bytearray | memoryview) -> Any:
        _check_size(self, data)
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
        except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise CodecError(f"invalid msgpack: {exc}") from exc
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise CodecError(f"invalid msgpack: {exc}") from exc


json_codec = JsonCodec()
msgpack_codec = MsgpackCodec()

_CODECS: dict[str, Codec] = {"json": json_codec, "msgpack": msgpack_codec}


def get_codec(name: str) -> Codec:
    """The codec called ``name`` (``"json"`` or ``"msgpack"``)."""
    try:
        return _CODECS[name]
    except KeyError:
        raise CodecError(f"unknown codec {name!r}; known: {', '.join(sorted(_CODECS))}") from None
