"""aipara wire basics shared by both channels: the peer's field names and the field checks.

The peer's field names are the wire format and are kept exactly, misspellings included
(``messege_type``, ``command_messege``). The helpers decode one request body into a JSON
object and check single fields, raising ``_Invalid`` with a reason fit for the peer's log;
the channel parsers in :mod:`~switchyard.services.aipara.rime_messages` and
:mod:`~switchyard.services.aipara.ai_messages` turn that into their own bad-request value.

Nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from switchyard.protocols.codec import CodecError, json_codec

__all__ = [
    "COMMAND_MESSEGE",
    "DEFAULT_MAX_REQUEST_BYTES",
    "MAX_WIRE_INT",
    "MESSEGE_TYPE",
    "json_type_name",
]

MESSEGE_TYPE = "messege_type"  # sic: the peer's spelling is the wire format
COMMAND_MESSEGE = "command_messege"  # sic
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024


def json_type_name(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class _Invalid(Exception):
    """Internal: a field failed validation; the message is the client-facing reason."""


def _decode_object(body: bytes | bytearray | memoryview, max_bytes: int) -> dict[str, Any]:
    size = len(body)
    if size > max_bytes:
        raise _Invalid(f"request too large: {size} bytes, limit {max_bytes}")
    if size == 0:
        raise _Invalid("empty request")
    try:
        obj = json_codec.decode(body)
    except CodecError as exc:
        raise _Invalid(f"malformed JSON: {exc}") from None
    except ValueError as exc:  # e.g. an integer literal over Python's 4300-digit limit
        raise _Invalid(f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _Invalid(f"request must be a JSON object, got {json_type_name(obj)}")
    return obj


def _kind(obj: Mapping[str, Any]) -> str | None:
    kind = obj.get(MESSEGE_TYPE)
    if kind is None:
        return None
    if not isinstance(kind, str):
        raise _Invalid(f"'{MESSEGE_TYPE}' must be a string, got {json_type_name(kind)}")
    return kind


def _opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid(f"'{key}' must be a string, got {json_type_name(value)}")
    return value


def _req_str(obj: Mapping[str, Any], key: str) -> str:
    if key not in obj or obj[key] is None:
        raise _Invalid(f"missing '{key}'")
    value = _opt_str(obj, key)
    assert value is not None
    return value


def _opt_bool(obj: Mapping[str, Any], key: str) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _Invalid(f"'{key}' must be a boolean, got {json_type_name(value)}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: Numbers the peers' C++ side can hold: a timestamp or timeout beyond a signed 64-bit
#: integer is refused (also a float such as 1e300, and JSON's 1e400, which parses as inf).
MAX_WIRE_INT = 2**63 - 1


def _in_range_number(obj: Mapping[str, Any], key: str, unit: str) -> int | float | None:
    """``obj[key]`` if it is a finite number within +-:data:`MAX_WIRE_INT`, None if absent."""
    value = obj.get(key)
    if value is None:
        return None
    if not _is_number(value):
        raise _Invalid(f"'{key}' must be a number of {unit}, got {json_type_name(value)}")
    # Compare without converting: float(10**400) raises OverflowError.
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid(f"'{key}' must be a number of {unit}, got {value} (not finite)")
    if not -MAX_WIRE_INT <= value <= MAX_WIRE_INT:
        raise _Invalid(f"'{key}' is out of range: at most {MAX_WIRE_INT} {unit} in magnitude")
    return value


def _opt_timestamp(obj: Mapping[str, Any], key: str = "timestamp") -> int | None:
    """Milliseconds since the epoch; Lua may send it as a float, so accept finite numbers."""
    value = _in_range_number(obj, key, "milliseconds")
    return None if value is None else int(value)
