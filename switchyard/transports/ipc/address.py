"""Where an IPC server listens: Unix socket paths (owner-only, stale-safe) and TCP.

Address strings accepted everywhere in the IPC module:

* ``/run/user/1000/switchyard/acct.sock``, ``unix:///abs/path.sock``, ``unix:rel.sock``
  or ``ipc:///abs/path.sock`` - a Unix-domain stream socket;
* ``tcp://127.0.0.1:5600`` (``tcp://[::1]:5600`` for IPv6; port 0 = any free port).

:func:`socket_path_for` gives each account its own socket path, and
:func:`open_listener` binds one:

* the socket file is created owner-only (``0600``) before it becomes visible at its
  path (bound in a private ``0700`` directory, then hard-linked into place), so no
  other user can connect even for an instant;
* a file already at the path is removed only if it is a socket and nothing answers
  a connect on it (a crashed server's leftover); a live server makes
  :class:`~switchyard.transports.ipc.errors.ServerAlreadyRunning` and any other
  kind of file ``FileExistsError``;
* on close the path is unlinked only if it is still our socket (a successor's
  socket at the same path is left alone).
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from switchyard.transports.ipc.errors import ServerAlreadyRunning

__all__ = ["IpcAddress", "connect_stream", "open_listener", "parse_address", "socket_path_for"]

_ACCOUNT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
_MAX_UNIX_PATH = 107
_PROBE_TIMEOUT = 1.0


@attrs.frozen
class IpcAddress:
    """A parsed address: ``path`` for Unix sockets, ``host`` + ``port`` for TCP."""

    path: str | None = None
    host: str | None = None
    port: int | None = None

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix://{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def parse_address(address: str | IpcAddress) -> IpcAddress:
    """Parse an address string (see the module docstring); ``ValueError`` if malformed."""
    if isinstance(address, IpcAddress):
        return address
    if not isinstance(address, str) or not address:
        raise ValueError(f"IPC address must be a non-empty string, not {address!r}")
    if address.startswith("tcp://"):
        rest = address[len("tcp://") :]
        if rest.startswith("["):
            host, sep, port_text = rest[1:].partition("]:")
        else:
            host, sep, port_text = rest.rpartition(":")
        if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
            raise ValueError(f"bad TCP address {address!r}: expected tcp://host:port")
        return IpcAddress(host=host, port=int(port_text))
    for prefix in ("unix://", "unix:", "ipc://"):
        if address.startswith(prefix):
            address = address[len(prefix) :]
            break
    if "://" in address:
        raise ValueError(f"unknown IPC address scheme in {address!r}: use a path, unix://path or tcp://host:port")
    if not address:
        raise ValueError("empty Unix socket path")
    if len(os.fsencode(address)) > _MAX_UNIX_PATH:
        raise ValueError(f"Unix socket path longer than {_MAX_UNIX_PATH} bytes: {address!r}")
    return IpcAddress(path=address)


def default_socket_dir() -> str:
    """``$XDG_RUNTIME_DIR/switchyard``, else ``<tmp>/switchyard-<uid>``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "switchyard")
    return os.path.join(tempfile.gettempdir(), f"switchyard-{os.getuid()}")


def socket_path_for(account_id: str, directory: str | os.PathLike[str] | None = None) -> str:
    """The one Unix socket path of ``account_id``: ``<directory>/<account_id>.sock``.

    ``account_id`` is checked to be a plain name (letters, digits, ``_ . @ -``), so
    it cannot escape the directory. Without ``directory`` the per-user runtime
    directory (:func:`default_socket_dir`) is used; create it with
    :func:`ensure_private_dir` before binding.
    """
    if not _ACCOUNT_RE.match(account_id):
        raise ValueError(f"account_id {account_id!r} must match {_ACCOUNT_RE.pattern}")
    base = os.fspath(directory) if directory is not None else default_socket_dir()
    return os.path.join(base, f"{account_id}.sock")


def ensure_private_dir(directory: str) -> None:
    """Create ``directory`` (``0700``) if missing; refuse one another user owns or can write."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    info = os.stat(directory)
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise PermissionError(
            f"{directory} is not a private directory of this user (uid {info.st_uid}, mode {oct(info.st_mode & 0o777)})"
        )


async def connect_stream(address: IpcAddress) -> trio.SocketStream:
    """Open a stream to ``address``; raises ``OSError`` if nothing listens there."""
    if address.path is not None:
        return await trio.open_unix_socket(address.path)
    assert address.host is not None and address.port is not None
    return await trio.open_tcp_stream(address.host, address.port)


async def _answers(path: str) -> bool:
    """Whether something accepts connections on the Unix socket at ``path``."""
    try:
        with trio.move_on_after(_PROBE_TIMEOUT):
            stream = await trio.open_unix_socket(path)
            await stream.aclose()
            return True
        return True  # a connect that hangs means a live listener with a full backlog
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise


async def _clear_stale(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket; refusing to remove it", path)
    if await _answers(path):
        raise ServerAlreadyRunning(errno.EADDRINUSE, "another server is listening on this socket", path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


async def _bind_unix(path: str, backlog: int) -> tuple[trio.socket.SocketType, tuple[int, int]]:
    """Bind and listen on ``path`` owner-only; returns the socket and its (dev, inode)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o700, exist_ok=True)  # an existing directory is left as it is
    await _clear_stale(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        private = tempfile.mkdtemp(prefix=".sy", dir=parent)  # 0700: nobody else can reach inside
        staging = os.path.join(private, "s")
        try:
            if len(os.fsencode(staging)) <= _MAX_UNIX_PATH:
                await sock.bind(staging)
                os.chmod(staging, 0o600)
                sock.listen(backlog)
                try:
                    os.link(staging, path)  # atomic and never replaces: a racing server wins cleanly
                except FileExistsError:
                    await _clear_stale(path)
                    os.link(staging, path)
                os.unlink(staging)
            else:
                # The staging path would be too long for sun_path: bind in place.
                # Sockets need write permission to connect, so under the usual
                # umask (022) the brief moment before chmod is still owner-only.
                await sock.bind(path)
                os.chmod(path, 0o600)
                sock.listen(backlog)
        finally:
            if os.path.lexists(staging):
                os.unlink(staging)
            os.rmdir(private)
        info = os.stat(path)
        return sock, (info.st_dev, info.st_ino)
    except BaseException:
        sock.close()
        raise


def _unlink_if_ours(path: str, identity: tuple[int, int]) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if (info.st_dev, info.st_ino) == identity:
        os.unlink(path)


@asynccontextmanager
async def open_listener(
    address: IpcAddress, backlog: int = 128
) -> AsyncIterator[tuple[trio.SocketListener, IpcAddress]]:
    """Listen on ``address``; yields the listener and the bound address (real TCP port).

    Unix socket files are handled as the module docstring says. The listener is
    closed (and our socket file removed) when the block exits.
    """
    if address.path is not None:
        sock, identity = await _bind_unix(address.path, backlog)
        listener = trio.SocketListener(sock)
        try:
            yield listener, address
        finally:
            _unlink_if_ours(address.path, identity)
            await listener.aclose()
        return
    assert address.host is not None and address.port is not None
    try:
        listeners = await trio.open_tcp_listeners(address.port, host=address.host, backlog=backlog)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ServerAlreadyRunning(errno.EADDRINUSE, "TCP address already in use", str(address)) from exc
        raise
    try:
        if len(listeners) != 1:
            # A host name resolving to several addresses: serve the first one only,
            # so one address string means one socket.
            for extra in listeners[1:]:
                await extra.aclose()
        listener = listeners[0]
        port = listener.socket.getsockname()[1]
        yield listener, IpcAddress(host=address.host, port=port)
    finally:
        await listeners[0].aclose()
