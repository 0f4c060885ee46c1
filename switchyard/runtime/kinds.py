"""Resolve an actor kind named in a manifest to its class.

A kind is either a registered short name or ``"package.module:ClassName"``. Short
names come from the built-in table ``switchyard.actors.KINDS`` (by import string,
so the runtime imports no concrete actor until one is asked for) and from the
``switchyard.kinds`` entry-point group, where other packages can add their own.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points

from switchyard.runtime.actor import Actor
from switchyard.runtime.errors import ConfigError

BUILTIN_TABLE = "switchyard.actors:KINDS"


def known_kinds() -> dict[str, str]:
    """Short name -> ``module:Class`` for every registered kind, sorted by name."""
    table: dict[str, str] = dict(_import_target(BUILTIN_TABLE))
    for ep in entry_points(group="switchyard.kinds"):
        table.setdefault(ep.name, ep.value)
    return dict(sorted(table.items()))


def resolve_kind(kind: str) -> type[Actor]:
    """The actor class for ``kind``; raises :class:`ConfigError` with one readable line."""
    target = kind if ":" in kind else known_kinds().get(kind)
    if target is None:
        raise ConfigError(f"unknown actor kind {kind!r} (known: {', '.join(known_kinds())})")
    try:
        cls = _import_target(target)
    except ConfigError:
        raise
    except Exception as exc:  # an import failing for any reason is a config problem here
        raise ConfigError(f"actor kind {kind!r}: cannot import {target}: {type(exc).__name__}: {exc}") from exc
    if not (inspect.isclass(cls) and issubclass(cls, Actor)):
        raise ConfigError(f"actor kind {kind!r}: {target} is not an Actor subclass")
    return cls


def summary(cls: type) -> str:
    """The first line of a class docstring."""
    doc = inspect.getdoc(cls) or ""
    return doc.strip().splitlines()[0] if doc.strip() else "(no description)"


def _import_target(target: str) -> object:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import module {module_name!r}: {exc}") from exc
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj
