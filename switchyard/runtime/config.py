"""Validate plain data (from TOML or a dict) into frozen attrs config classes.

The one config loader: :func:`build_config` walks the attrs fields of the target
class, checks every value against the field's type annotation and reports the first
problem as one :class:`ConfigError` line naming where it is and the key::

    actor 'rime_state': key 'port': expected int, got str ('10086')

Supported annotations: ``str``, ``int``, ``float`` (ints accepted), ``bool``,
``bytes`` (from str), ``list[T]``, ``tuple[T, ...]``, ``dict[str, T]``,
``T | None``, ``Literal[...]``, ``Any``, enums (by value) and nested attrs classes.

Range and syntax checks are attrs validators on the fields; :func:`build_config`
runs them itself so a bad value is reported with the key, e.g.
``actor 'a' [config]: key 'max_message_size': must be > 0, got -5``. The helpers
here (:func:`positive`, :func:`non_negative`, :func:`port`, :func:`endpoint`,
:func:`host_port`, :func:`existing_file`) pass ``None`` through, so they fit
optional fields too::

    @attrs.frozen
    class Config:
        endpoint: str = attrs.field(default="tcp://127.0.0.1:5590", validator=endpoint)
        max_message_size: int = attrs.field(default=1 << 20, validator=positive)

A check that should run only when a config is loaded (not when code constructs the
class, e.g. a file that must exist by the time the manifest is checked) goes in the
field's metadata instead: ``attrs.field(default="", metadata={"validate": existing_file})``.

Renamed or moved keys: list them in a class attribute ``renamed_keys`` (old dotted
key -> new dotted key, a ``ClassVar[dict[str, str]]``, e.g.
``{"ping_timeout": "engine.ping_timeout"}``); an old
key still works and logs one deprecation warning line naming both.

A nested table (a field whose type is an attrs class) names only the keys it
changes: the others keep the field's own default, e.g. an actor's
``limits = attrs.field(factory=lambda: EndpointLimits(max_message_size=65536))``
keeps 65536 when the manifest sets only ``[actor.config.limits] sndhwm = 10``.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import attrs

from switchyard.runtime.errors import ConfigError

__all__ = [
    "build_config",
    "endpoint",
    "existing_file",
    "host_port",
    "non_negative",
    "port",
    "positive",
]

T = TypeVar("T")
_MISSING = object()
log = logging.getLogger("switchyard.config")


# -- validators (attrs-compatible: called as validator(instance, attribute, value)) --
def positive(instance: Any, attribute: Any, value: Any) -> None:
    """A number > 0 (``None`` passes)."""
    if value is not None and not value > 0:
        raise ValueError(f"must be > 0, got {value!r}")


def non_negative(instance: Any, attribute: Any, value: Any) -> None:
    """A number >= 0 (``None`` passes)."""
    if value is not None and not value >= 0:
        raise ValueError(f"must be >= 0, got {value!r}")


def port(instance: Any, attribute: Any, value: Any) -> None:
    """A TCP port, 1..65535 (0, "any free port", is accepted too; ``None`` passes)."""
    if value is not None and not 0 <= value <= 65535:
        raise ValueError(f"must be a port number 0..65535, got {value!r}")


_ENDPOINT = re.compile(r"^(?:tcp://(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\s]+):(?P<port>\d+|\*)|ipc://\S+|inproc://\S+)$")


def endpoint(instance: Any, attribute: Any, value: Any) -> None:
    """A ZeroMQ endpoint: ``tcp://HOST:PORT``, ``ipc://PATH`` or ``inproc://NAME``.

    ``None`` and ``""`` (the usual "disabled") pass.
    """
    if value is None or value == "":
        return
    match = _ENDPOINT.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"must be an endpoint like tcp://127.0.0.1:5555 or ipc://PATH, got {value!r}")
    number = match.group("port")
    if number not in (None, "*") and not 0 <= int(number) <= 65535:
        raise ValueError(f"port {number} of {value!r} is not 0..65535")


def host_port(instance: Any, attribute: Any, value: Any) -> None:
    """``HOST:PORT`` with a port 0..65535 (``None`` passes)."""
    if value is None:
        return
    host, sep, number = str(value).rpartition(":")
    if not sep or not host or not number.isdigit() or not 0 <= int(number) <= 65535:
        raise ValueError(f"must be HOST:PORT like 127.0.0.1:8090, got {value!r}")


def existing_file(instance: Any, attribute: Any, value: Any) -> None:
    """A path (relative to the working directory) to an existing file; ``None`` and ``""`` pass."""
    if value and not os.path.isfile(value):
        raise ValueError(f"file {str(value)!r} does not exist")


def build_config(cls: type[T], value: Any, *, where: str) -> T:
    """``value`` (an instance of ``cls``, a mapping, or ``None`` for defaults) as a ``cls``."""
    if isinstance(value, cls):
        return value
    if value is None:
        value = {}
    return _structure(cls, value, where, path="")


def _structure(cls: Any, data: Any, where: str, path: str, base: Any = None) -> Any:
    """``data`` as a ``cls``; keys it lacks come from ``base`` (an instance) if given,
    else from the class defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {_label(path, 'config')} must be a table, got {_type_name(data)}")
    renamed = getattr(cls, "renamed_keys", None)
    if renamed:
        data = _apply_renames(dict(data), renamed, where, path)
    fields = {f.name: f for f in attrs.fields(cls)}
    unknown = [key for key in data if key not in fields]
    if unknown:
        known = ", ".join(fields) or "(none)"
        raise ConfigError(f"{where}: unknown key {_join(path, unknown[0])!r} (known: {known})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        key = _join(path, name)
        if name in data:
            tp = hints.get(name, Any)
            nested_default = _instance_default(field)
            if (
                isinstance(tp, type)
                and attrs.has(tp)
                and isinstance(nested_default, tp)
                and isinstance(data[name], dict)
            ):
                # a nested table names only what it changes; the rest keeps this
                # field's own default (an actor's limits, not the limits class's)
                value = _structure(tp, data[name], where, key, base=nested_default)
            else:
                value = _check(tp, data[name], where, key)
            for validate in (field.validator, field.metadata.get("validate")):
                if validate is None:
                    continue
                try:
                    validate(None, field, value)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"{where}: key {key!r}: {exc}") from None
            kwargs[field.alias or name] = value
        elif base is not None:
            kwargs[field.alias or name] = getattr(base, name)
        elif field.default is attrs.NOTHING:
            raise ConfigError(f"{where}: missing required key {key!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {_label(path, 'config')}: {exc}") from None


def _instance_default(field: Any) -> Any:
    """The value a field gets when its key is absent (a factory is called), or None."""
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return None if default.takes_self else default.factory()
    return None if default is attrs.NOTHING else default


def _apply_renames(data: dict[str, Any], renamed: dict[str, str], where: str, path: str) -> dict[str, Any]:
    for old, new in renamed.items():
        if old not in data:
            continue
        value = data.pop(old)
        log.warning("%s: key %r is deprecated: write %r instead", where, _join(path, old), _join(path, new))
        *parents, leaf = new.split(".")
        target = data
        for part in parents:
            nested = target.setdefault(part, {})
            if not isinstance(nested, dict):
                raise ConfigError(f"{where}: key {_join(path, part)!r} must be a table, got {_type_name(nested)}")
            target = nested
        if leaf in target:
            raise ConfigError(f"{where}: both {_join(path, old)!r} and its new name {_join(path, new)!r} are set")
        target[leaf] = value
    return data


def _check(tp: Any, value: Any, where: str, key: str) -> Any:
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(option, value, where, key)
            except ConfigError as exc:
                errors.append(exc)
        raise (
            errors[0]
            if len(errors) == 1
            else ConfigError(f"{where}: key {key!r}: expected {_type_text(tp)}, got {_type_name(value)} ({value!r})")
        )
    if origin is Literal:
        if value not in get_args(tp):
            allowed = ", ".join(repr(v) for v in get_args(tp))
            raise ConfigError(f"{where}: key {key!r}: must be one of {allowed}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise _wrong(where, key, tp, value)
        args = get_args(tp)
        item_type = args[0] if args else Any
        items = [_check(item_type, item, where, f"{key}[{i}]") for i, item in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(where, key, tp, value)
        args = get_args(tp)
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): _check(value_type, v, where, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and attrs.has(tp):
        return _structure(tp, value, where, key)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in tp)
            raise ConfigError(f"{where}: key {key!r}: must be one of {allowed}, got {value!r}") from None
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _wrong(where, key, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _wrong(where, key, tp, value)
    if tp is bytes and isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _wrong(where, key, tp, value)
    return value


def _wrong(where: str, key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"{where}: key {key!r}: expected {_type_text(tp)}, got {_type_name(value)} ({value!r})")


def _type_text(tp: Any) -> str:
    if isinstance(tp, type) and get_origin(tp) is None:
        return "table" if attrs.has(tp) else tp.__name__
    return str(tp).replace("typing.", "")


def _type_name(value: Any) -> str:
    names: dict[type, str] = {dict: "table", list: "array"}
    return names.get(type(value), type(value).__name__)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _label(path: str, default: str) -> str:
    return f"key {path!r}" if path else default
