"""Build a Go peer (a ``package main`` file using cgo and libzmq) for a test or a benchmark.

:func:`build_go` raises :class:`GoUnavailable` when the Go toolchain or libzmq's
development files are missing; :func:`build_go_peer` turns that into a skip with the
reason, or a failure under CI (``CI=true``), like :func:`switchyard.testing.cpp.compile_cpp`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from switchyard.testing.cpp import _unavailable

__all__ = ["GoUnavailable", "build_go", "build_go_peer"]

_MISSING_HINTS = ("zmq.h", "cannot find -lzmq", "C compiler")


class GoUnavailable(RuntimeError):
    """The Go toolchain (or what its cgo build needs) is not installed here."""


def build_go(source: Path, out: Path) -> Path:
    """Compile the single-file program ``source`` to the executable ``out``; return ``out``.

    No module download is involved (GOPATH mode, standard library and cgo only); the
    build cache lives beside ``out`` unless ``GOCACHE`` is set. Raises
    :class:`GoUnavailable` for a missing toolchain or libzmq headers, ``RuntimeError``
    with the compiler's output for any other build error.
    """
    go = shutil.which("go")
    if go is None:
        raise GoUnavailable("the Go toolchain is not installed (apt-get install golang-go)")
    env = dict(os.environ, GO111MODULE="off", CGO_ENABLED="1")
    env.setdefault("GOCACHE", str(out.parent / "gocache"))
    env.setdefault("GOPATH", str(out.parent / "gopath"))
    result = subprocess.run(
        [go, "build", "-o", str(out), str(source)], capture_output=True, text=True, timeout=300, env=env
    )
    if result.returncode != 0:
        if any(hint in result.stderr for hint in _MISSING_HINTS):
            raise GoUnavailable(
                f"cgo cannot build against libzmq (apt-get install libzmq3-dev gcc): {result.stderr[:200]}"
            )
        raise RuntimeError(f"go build {source.name} failed:\n{result.stderr}")
    return out


def build_go_peer(source: Path, out: Path) -> Path:
    """:func:`build_go` for a test: skips with the reason (fails under CI) when Go is missing."""
    try:
        return build_go(source, out)
    except GoUnavailable as exc:
        _unavailable(str(exc))
