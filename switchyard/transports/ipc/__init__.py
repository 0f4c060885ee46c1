"""IPC sockets in one import: ``from switchyard.transports.ipc import SocketServer, SocketClient, request``.

The pieces live in their own modules: :mod:`~switchyard.transports.ipc.server`,
:mod:`~switchyard.transports.ipc.server_connection` (one client connection),
:mod:`~switchyard.transports.ipc.client`, :mod:`~switchyard.transports.ipc.client_connection`
(one client connection), :mod:`~switchyard.transports.ipc.backoff`, :mod:`~switchyard.transports.ipc.stream`,
:mod:`~switchyard.transports.ipc.connection`, :mod:`~switchyard.transports.ipc.address`
and :mod:`~switchyard.transports.ipc.errors`; the wire format is
:mod:`switchyard.protocols.ipc` and :mod:`switchyard.protocols.ipc_framing`.
See docs/ipc.md.
"""

from switchyard.transports.ipc.address import IpcAddress, parse_address, socket_path_for
from switchyard.transports.ipc.client import Backoff, IpcStream, SocketClient, open_ipc_client
from switchyard.transports.ipc.errors import (
    ConnectionLost,
    IpcError,
    NotConnected,
    RemoteError,
    ReplyError,
    RequestTimeout,
    ServerAlreadyRunning,
)
from switchyard.transports.ipc.server import RequestContext, SocketServer, current_request, request

__all__ = [
    "Backoff",
    "ConnectionLost",
    "IpcAddress",
    "IpcError",
    "IpcStream",
    "NotConnected",
    "RemoteError",
    "ReplyError",
    "RequestContext",
    "RequestTimeout",
    "ServerAlreadyRunning",
    "SocketClient",
    "SocketServer",
    "current_request",
    "open_ipc_client",
    "parse_address",
    "request",
    "socket_path_for",
]
