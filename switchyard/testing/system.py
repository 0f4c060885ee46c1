"""Run an actor system for the length of a test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from switchyard.runtime import System, open_system
from switchyard.runtime.manifest import load_manifest, open_app, parse_manifest, start_app


@asynccontextmanager
async def run_system(name: str = "test", *, grace_period: float = 1.0, **options: Any) -> AsyncIterator[System]:
    """``open_system`` with test-friendly defaults (a short grace period)."""
    async with open_system(name, grace_period=grace_period, **options) as system:
        yield system


@asynccontextmanager
async def run_manifest(manifest: str | Path, *, grace_period: float = 1.0) -> AsyncIterator[System]:
    """Start an app from a manifest path (or TOML text containing ``[app]``) for a test."""
    text = str(manifest)
    app = parse_manifest(text, source="<test manifest>") if "[app]" in text else load_manifest(manifest)
    async with open_app(app, grace_period=grace_period) as system:
        await start_app(system, app)
        yield system
