"""Lazy re-exports for package ``__init__`` modules (PEP 562).

A service package re-exports its user API without importing its heavy
dependencies (onnxruntime, numpy, ...) until a name is actually used::

    __all__ = ["InferenceActor"]
    __getattr__, __dir__ = lazy_exports(__name__, {"InferenceActor": ".service"})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` that import ``names[attr]`` (relative to ``package``) on first use.

    The imported object is cached in the package's namespace, so each name is
    resolved once; an unknown attribute raises :class:`AttributeError` as usual.
    """
    table = dict(names)

    def __getattr__(attr: str) -> Any:
        module_name = table.get(attr)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        value = getattr(importlib.import_module(module_name, package), attr)
        setattr(sys.modules[package], attr, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(table) | set(vars(sys.modules[package])))

    return __getattr__, __dir__
