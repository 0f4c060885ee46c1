"""Collision-free loopback endpoints for tests that start their own servers."""

from __future__ import annotations

import socket
import tempfile
import uuid
from pathlib import Path


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (bind to port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """``tcp://host:port`` with a port that was free a moment ago."""
    return f"tcp://{host}:{free_tcp_port(host)}"


def ipc_endpoint(directory: str | Path | None = None, stem: str = "sy") -> str:
    """A fresh ``ipc://`` endpoint in ``directory`` (default: the system temp dir).

    Unix socket paths are limited to ~107 bytes, so keep ``directory`` short.
    """
    base = Path(directory) if directory is not None else Path(tempfile.gettempdir())
    return f"ipc://{base / f'{stem}-{uuid.uuid4().hex[:12]}.sock'}"
