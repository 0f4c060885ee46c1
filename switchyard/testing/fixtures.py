"""pytest fixtures (needs pytest and pytest-trio)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from switchyard.runtime import System
from switchyard.testing.system import run_system


@pytest.fixture
async def actor_system() -> AsyncIterator[System]:
    """pytest-trio fixture: a fresh system, shut down after the test.

    Use it by importing it into your ``conftest.py``:
    ``from switchyard.testing import actor_system``.
    """
    async with run_system() as system:
        yield system
