"""Commands queued for a Rime client and delivered in its replies' ``command_messege``.

Each command is a frozen attrs class; :func:`command_to_wire` renders one as the
client parses it and :func:`command_from_dict` validates a plain mapping (from a
UI, a script or another actor) into one, raising :class:`CommandError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = [
    "COMMAND_KINDS",
    "ClipboardData",
    "CommandError",
    "OutboxCommand",
    "PasteExecuted",
    "PasteFailed",
    "Ping",
    "SetConfig",
    "SetOption",
    "SetProperty",
    "command_from_dict",
    "command_to_wire",
]


# ---------------------------------------------------------------------------
# Commands queued for a client (delivered in ``command_messege``)


def _is_json_value(value: Any, depth: int = 0) -> bool:
    if depth > 32:
        return False
    if value is None or isinstance(value, (bool, str)):
        return True
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_is_json_value(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json_value(v, depth + 1) for k, v in value.items())
    return False


def _json_value(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not _is_json_value(value):
        raise TypeError(f"{attribute.name} must be a JSON value (null/bool/number/string/array/object)")


_str = attrs.validators.instance_of(str)
_bool = attrs.validators.instance_of(bool)
_opt_str_v = attrs.validators.optional(_str)


@attrs.frozen
class SetOption:
    """Turn a Rime switch on or off in the client (``context:set_option``)."""

    option_name: str = attrs.field(validator=_str)
    option_value: bool = attrs.field(validator=_bool)
    command = "set_option"


@attrs.frozen
class SetProperty:
    """Set a context property in the client."""

    property_name: str = attrs.field(validator=_str)
    property_value: str = attrs.field(validator=_str)
    command = "set_property"


@attrs.frozen
class SetConfig:
    """Change a schema config value; ``config_value`` None marks the path deleted."""

    config_path: str = attrs.field(validator=_str)
    config_value: Any = attrs.field(default=None, validator=_json_value, hash=False)
    config_name: str | None = attrs.field(default=None, validator=_opt_str_v)
    command = "set_config"


@attrs.frozen
class ClipboardData:
    """Clipboard text for the client to append to its input (or a failure to report)."""

    text: str = attrs.field(default="", validator=_str)
    success: bool = attrs.field(default=True, validator=_bool)
    error: str | None = attrs.field(default=None, validator=_opt_str_v)
    command = "clipboard_data"


@attrs.frozen
class PasteExecuted:
    """Tell the client its paste request was carried out."""

    command = "paste_executed"


@attrs.frozen
class PasteFailed:
    """Tell the client its paste request failed, and why."""

    error: str = attrs.field(default="", validator=_str)
    command = "paste_failed"


@attrs.frozen
class Ping:
    """Ask the client for a sign of life; it answers with a ``{"response": "pong"}`` request."""

    command = "ping"


OutboxCommand = SetOption | SetProperty | SetConfig | ClipboardData | PasteExecuted | PasteFailed | Ping

COMMAND_KINDS: dict[str, type] = {
    cls.command: cls for cls in (SetOption, SetProperty, SetConfig, ClipboardData, PasteExecuted, PasteFailed, Ping)
}

_COMMAND_TYPE = {
    "set_option": "option",
    "set_property": "property",
    "set_config": "config",
    "clipboard_data": "clipboard",
    "paste_executed": "paste",
    "paste_failed": "paste",
    "ping": "ping",
}


class CommandError(ValueError):
    """A mapping that is not a valid command for the client."""


def command_to_wire(command: OutboxCommand, timestamp_ms: int) -> dict[str, Any]:
    """The ``command_messege`` entry for ``command``, stamped with when it was queued."""
    name = command.command
    wire: dict[str, Any] = {"command": name, "command_type": _COMMAND_TYPE[name]}
    if isinstance(command, ClipboardData):
        clipboard: dict[str, Any] = {"text": command.text}
        if command.error is not None:
            clipboard["error"] = command.error
            wire["error"] = command.error
        wire["success"] = command.success
        wire["clipboard"] = clipboard
    elif isinstance(command, SetConfig):
        wire["config_path"] = command.config_path
        wire["config_value"] = command.config_value
        if command.config_name is not None:
            wire["config_name"] = command.config_name
    else:
        wire.update(attrs.asdict(command))
    wire["timestamp"] = timestamp_ms
    return wire


def command_from_dict(data: Mapping[str, Any]) -> OutboxCommand:
    """Validate a plain mapping (from TOML, JSON, another actor) into a command.

    ``{"command": "set_option", "option_name": "ascii_mode", "option_value": true}``;
    raises :class:`CommandError` saying what is wrong.
    """
    if not isinstance(data, Mapping):
        raise CommandError(f"a command must be a mapping, got {type(data).__name__}")
    name = data.get("command")
    if not isinstance(name, str):
        raise CommandError("a command needs a string 'command' field")
    cls = COMMAND_KINDS.get(name)
    if cls is None:
        raise CommandError(f"unknown command {name!r}; known: {', '.join(sorted(COMMAND_KINDS))}")
    fields = {a.name for a in attrs.fields(cls)}
    extra = set(data) - fields - {"command", "command_type", "timestamp"}
    if extra:
        raise CommandError(f"{name}: unexpected field(s) {', '.join(sorted(extra))}")
    kwargs = {k: v for k, v in data.items() if k in fields}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CommandError(f"{name}: {exc}") from None
