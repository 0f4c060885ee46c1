"""Hypothesis strategies for Engine.IO 4 and Socket.IO 5 packets, and a robot app for tests.

``json_values(binary=True)`` adds ``bytes`` leaves, which Socket.IO carries as binary
attachments. Generated objects never use the ``_placeholder`` key (a real payload
holding it next to binary attachments would be read as a placeholder by every
Socket.IO implementation) and strings hold no lone surrogates (the wire is UTF-8).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import urllib.error
import urllib.request
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from switchyard.protocols import engineio, socketio
from switchyard.runtime import System
from switchyard.testing.ports import free_tcp_port
from switchyard.testing.system import run_system

__all__ = [
    "NodeClientUnavailable",
    "engineio_frames",
    "engineio_packets",
    "json_text",
    "json_values",
    "node_socketio_client",
    "open_robot_app",
    "project_zip",
    "socketio_event_names",
    "socketio_namespaces",
    "socketio_packets",
]

json_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)

_SAFE_INT = st.integers(min_value=-(2**53), max_value=2**53)
_FLOATS = st.floats(allow_nan=False, allow_infinity=False)


def json_values(*, binary: bool = False, max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """JSON-representable values (optionally with ``bytes`` leaves)."""
    leaves: list[st.SearchStrategy[Any]] = [st.none(), st.booleans(), _SAFE_INT, _FLOATS, json_text]
    if binary:
        leaves.append(st.binary(max_size=64))
    keys = json_text.filter(lambda k: k != "_placeholder")
    return st.recursive(
        st.one_of(leaves),
        lambda children: st.one_of(
            st.lists(children, max_size=5),
            st.dictionaries(keys, children, max_size=5),
        ),
        max_leaves=max_leaves,
    )


@st.composite
def engineio_packets(draw: st.DrawFn) -> engineio.Packet:
    """Any Engine.IO packet: text data for every type, or bytes for MESSAGE."""
    kind = draw(st.sampled_from(list(engineio.PacketType)))
    if kind is engineio.PacketType.MESSAGE and draw(st.booleans()):
        return engineio.Packet(kind, draw(st.binary(max_size=256)))
    return engineio.Packet(kind, draw(json_text))


def engineio_frames() -> st.SearchStrategy[str | bytes]:
    """Arbitrary WebSocket frames, well-formed or not."""
    return st.one_of(st.text(max_size=80), st.binary(max_size=80), engineio_packets().map(engineio.encode_packet))


socketio_namespaces = st.one_of(
    st.just(socketio.DEFAULT_NAMESPACE),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters=",?"), max_size=12).map(lambda s: "/" + s),
)

socketio_event_names = json_text.filter(lambda name: name not in socketio.RESERVED_EVENTS)

_ids = st.one_of(st.none(), st.integers(min_value=0, max_value=10**15 - 1))


@st.composite
def socketio_packets(draw: st.DrawFn, *, binary: bool = True) -> socketio.Packet:
    """Any valid Socket.IO packet, binary attachments included when ``binary``."""
    kind = draw(st.sampled_from([t for t in socketio.PacketType if t < socketio.PacketType.BINARY_EVENT]))
    nsp = draw(socketio_namespaces)
    values = json_values(binary=binary)
    T = socketio.PacketType
    if kind is T.CONNECT:
        data = draw(st.one_of(st.none(), st.dictionaries(json_text, json_values(), max_size=4)))
        return socketio.Packet(kind, nsp, data)
    if kind is T.DISCONNECT:
        return socketio.Packet(kind, nsp)
    if kind is T.CONNECT_ERROR:
        data = draw(
            st.one_of(json_text, st.fixed_dictionaries({"message": json_text}, optional={"data": json_values()}))
        )
        return socketio.Packet(kind, nsp, data)
    if kind is T.EVENT:
        data = [draw(socketio_event_names), *draw(st.lists(values, max_size=4))]
        return socketio.Packet(kind, nsp, data, draw(_ids))
    data = draw(st.lists(values, max_size=4))
    return socketio.Packet(T.ACK, nsp, data, draw(st.integers(min_value=0, max_value=10**15 - 1)))


# -- running the robot app in a test -------------------------------------------------


def project_zip(files: dict[str, str | bytes], *, folder: str = "") -> bytes:
    """A project ZIP holding ``files`` (path -> content), optionally under ``folder/``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(f"{folder}/{name}" if folder else name, content)
    return buf.getvalue()


@asynccontextmanager
async def open_robot_app(
    storage_root: str | Path,
    *,
    bridge: dict[str, Any] | None = None,
    worker: dict[str, Any] | None = None,
    grace_period: float = 2.0,
) -> AsyncIterator[tuple[System, int]]:
    """Run the robot worker and the Socket.IO bridge on a free loopback port.

    Yields ``(system, port)``; clients connect to ``http://127.0.0.1:<port>``.
    ``bridge`` / ``worker`` override config keys of the two actors.
    """
    from switchyard.services.robot.socketio_bridge import SocketIOBridgeActor
    from switchyard.services.robot.worker import RobotWorkerActor

    port = free_tcp_port()
    async with run_system("robot-test", grace_period=grace_period) as system:
        await system.spawn(
            RobotWorkerActor, name="robot_worker", config={"storage_root": str(storage_root), **(worker or {})}
        )
        await system.spawn(SocketIOBridgeActor, name="socketio_bridge", config={"port": port, **(bridge or {})})
        yield system, port


# -- the real Node socket.io-client ---------------------------------------------------


class NodeClientUnavailable(Exception):
    """node/npm are missing or the npm registry cannot be reached; the text says which."""


def _registry_reachable(npm: str, timeout: float) -> str | None:
    """None if the npm registry answers within ``timeout`` seconds, else why not."""
    try:
        registry = subprocess.run(
            [npm, "config", "get", "registry"], capture_output=True, text=True, timeout=timeout
        ).stdout.strip()
    except subprocess.TimeoutExpired:
        return "npm config get registry timed out"
    registry = (registry or "https://registry.npmjs.org/").rstrip("/")
    try:
        with urllib.request.urlopen(f"{registry}/socket.io-client", timeout=timeout) as answer:
            answer.read(1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"npm registry {registry} unreachable: {exc}"
    return None


def node_socketio_client(
    *, version: str = "4", cache_dir: str | Path | None = None, probe_timeout: float = 5.0
) -> Path:
    """A folder holding ``node_modules/socket.io-client`` (``version``), installed from npm once.

    The install is cached in ``cache_dir`` (default ``$SWITCHYARD_NODE_CACHE``, else
    ``~/.cache/switchyard/node-socketio-client-<version>``) and reused across runs.
    Before installing, the registry is probed for ``probe_timeout`` seconds, so an
    offline host fails in seconds. Raises :class:`NodeClientUnavailable` with the reason.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise NodeClientUnavailable("node/npm are not installed (CI installs them: .ci/run)")
    default = Path.home() / ".cache" / "switchyard" / f"node-socketio-client-{version}"
    folder = Path(cache_dir or os.environ.get("SWITCHYARD_NODE_CACHE") or default)
    if (folder / "node_modules" / "socket.io-client" / "package.json").is_file():
        return folder
    why = _registry_reachable(npm, probe_timeout)
    if why is not None:
        raise NodeClientUnavailable(why)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
                str(folder),
                f"socket.io-client@{version}",
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    except subprocess.TimeoutExpired:
        raise NodeClientUnavailable(f"npm install socket.io-client@{version} took over 180 s") from None
    if result.returncode != 0:
        raise NodeClientUnavailable(f"npm install socket.io-client@{version} failed: {result.stderr[-500:]}")
    return folder
