"""Compile a C++ peer for a test (g++, C++17), skipping with the reason when the
toolchain or headers are missing — except under CI (``CI=true``), where a real-peer
test must run, so a missing toolchain fails the test instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import pytest

_MISSING_HEADER_HINTS = ("zmq.hpp", "zmq.h:", "cannot find -lzmq")


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI must install it: see .ci/run)")
    pytest.skip(reason)


def compile_cpp(source: Path, out: Path, *, libs: Sequence[str] = (), std: str = "c++17") -> Path:
    """Compile ``source`` to the executable ``out`` with warnings as errors; return ``out``.

    ``libs`` are library names for ``-l`` (e.g. ``["zmq"]``). Skips (or fails under
    CI) when g++ or the libzmq/cppzmq development files are missing; any other
    compile error fails the test with the compiler's output.
    """
    gxx = shutil.which("g++")
    if gxx is None:
        _unavailable("g++ is not installed (apt-get install g++)")
    command = [gxx, f"-std={std}", "-O1", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(source)]
    command += [f"-l{lib}" for lib in libs]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    if result.returncode != 0 and any(hint in result.stderr for hint in _MISSING_HEADER_HINTS):
        _unavailable(
            f"libzmq/cppzmq development files missing (apt-get install libzmq3-dev cppzmq-dev): "
            f"{result.stderr.strip()[:200]}"
        )
    assert result.returncode == 0, result.stderr
    return out
