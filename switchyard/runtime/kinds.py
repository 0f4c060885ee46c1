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

__all__ = ["BUILTIN_TABLE", "MODULE_EXTRAS", "known_kinds", "missing_extra", "resolve_kind", "summary"]

BUILTIN_TABLE = "switchyard.actors:KINDS"

#: Top-level module -> the extra of ``pip install 'switchyard[EXTRA]'`` that provides it.
MODULE_EXTRAS: dict[str, str] = {
    "numpy": "inference",
    "onnxruntime": "inference",
    "pinyin2hanzi": "aipara",
    "jieba": "aipara",
    "pypinyin": "aipara",
    "httpx": "aipara",
    "inotify_simple": "tensor",
    "hypothesis": "testing",
    "pytest": "testing",
    "pytest_trio": "testing",
}


def missing_extra(exc: BaseException) -> str | None:
    """The extra to install for a ``ModuleNotFoundError`` (walking ``__cause__``), or ``None``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ModuleNotFoundError) and seen.name:
            extra = MODULE_EXTRAS.get(seen.name.partition(".")[0])
            if extra is not None:
                return extra
        seen = seen.__cause__
    return None


def known_kinds() -> dict[str, str]:
    """Short name -> ``module:Class`` for every registered kind, sorted by name."""
    builtin = _import_target(BUILTIN_TABLE)
    assert isinstance(builtin, dict)
    table: dict[str, str] = dict(builtin)
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
    except ConfigError as exc:
        extra = missing_extra(exc)
        if extra is not None:
            raise _needs_extra(kind, extra, exc.__cause__) from None
        raise
    except Exception as exc:
        extra = missing_extra(exc)
        if extra is not None:
            raise _needs_extra(kind, extra, exc) from None  # an import failing for any reason is a config problem here
        raise ConfigError(f"actor kind {kind!r}: cannot import {target}: {type(exc).__name__}: {exc}") from exc
    if not (inspect.isclass(cls) and issubclass(cls, Actor)):
        raise ConfigError(f"actor kind {kind!r}: {target} is not an Actor subclass")
    return cls


def _needs_extra(kind: str, extra: str, exc: BaseException | None) -> ConfigError:
    module = getattr(exc, "name", None) or "a module"
    return ConfigError(
        f"actor kind {kind!r} needs the {extra!r} extra ({module} is not installed): pip install 'switchyard[{extra}]'"
    )


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
