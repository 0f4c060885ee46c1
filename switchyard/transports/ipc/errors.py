"""Exceptions the IPC socket client and server raise on purpose."""

from __future__ import annotations

__all__ = [
    "ConnectionLost",
    "IpcError",
    "NotConnected",
    "RemoteError",
    "ReplyError",
    "RequestTimeout",
    "ServerAlreadyRunning",
]


class IpcError(Exception):
    """Base class of every IPC transport error."""


class NotConnected(IpcError):
    """No connection, and none is coming: never connected, closed, or reconnecting gave up."""


class ConnectionLost(IpcError):
    """The connection dropped while this request was in flight.

    The server may or may not have run the handler; the request was not retried.
    """

    def __init__(self, address: str, method: str, id: str, reason: str) -> None:
        super().__init__(
            f"connection to {address} lost ({reason}) while request {method!r} (id {id}) was in flight; "
            "it may or may not have been processed"
        )
        self.address = address
        self.method = method
        self.id = id
        self.reason = reason


class RequestTimeout(IpcError, TimeoutError):
    """No answer within the request's timeout (including any wait for a reconnect)."""

    def __init__(self, method: str, timeout: float) -> None:
        super().__init__(f"request {method!r} got no answer within {timeout:g} s")
        self.method = method
        self.timeout = timeout


class RemoteError(IpcError):
    """The server answered with an ``error`` message.

    ``code`` is one of :mod:`switchyard.protocols.ipc`'s ``ERR_*`` constants (or a
    code a handler chose); ``detail`` is the server's text.
    """

    def __init__(self, method: str, code: str, detail: str) -> None:
        super().__init__(f"{method!r} failed on the server: [{code}] {detail}")
        self.method = method
        self.code = code
        self.detail = detail


class ServerAlreadyRunning(IpcError, OSError):
    """Something already answers on the server's Unix socket path or TCP port."""


class ReplyError(IpcError):
    """Raise from a server handler to answer with this error ``code`` and text.

    The server sends ``{"code": code, "message": detail}`` without logging a
    traceback: this is an answer, not a failure of the handler. The client
    raises :class:`RemoteError` with the same code.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"[{code}] {detail}")
        self.code = code
        self.detail = detail
