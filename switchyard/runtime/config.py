"""Validate plain data (from TOML or a dict) into frozen attrs config classes.

The one config loader: :func:`build_config` walks the attrs fields of the target
class, checks every value against the field's type annotation and reports the first
problem as one :class:`ConfigError` line naming where it is and the key::

    actor 'rime_state': key 'port': expected int, got str ('10086')

Supported annotations: ``str``, ``int``, ``float`` (ints accepted), ``bool``,
``bytes`` (from str), ``list[T]``, ``tuple[T, ...]``, ``dict[str, T]``,
``T | None``, ``Literal[...]``, ``Any``, enums (by value) and nested attrs classes.
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import attrs

from switchyard.runtime.errors import ConfigError

T = TypeVar("T")
_MISSING = object()


def build_config(cls: type[T], value: Any, *, where: str) -> T:
    """``value`` (an instance of ``cls``, a mapping, or ``None`` for defaults) as a ``cls``."""
    if isinstance(value, cls):
        return value
    if value is None:
        value = {}
    return _structure(cls, value, where, path="")


def _structure(cls: Any, data: Any, where: str, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {_label(path, 'config')} must be a table, got {_type_name(data)}")
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
            kwargs[field.alias or name] = _check(hints.get(name, Any), data[name], where, key)
        elif field.default is attrs.NOTHING:
            raise ConfigError(f"{where}: missing required key {key!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {_label(path, 'config')}: {exc}") from None


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
    return {dict: "table", list: "array"}.get(type(value), type(value).__name__)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _label(path: str, default: str) -> str:
    return f"key {path!r}" if path else default
