"""ZeroMQ CURVE for servers: key files, socket options and a Trio ZAP handler.

A CURVE server socket encrypts every connection; *which* clients may connect is
decided by a ZAP handler (ZeroMQ RFC 27): a REP socket bound to
``inproc://zeromq.zap.01`` in the same ZeroMQ context, asked once per handshake.
:class:`ZapAuthenticator` is that handler as a Trio task (no threads).

One context can have only one ZAP endpoint, yet several actors in a process may each
want CURVE with their own allowed keys. So each actor runs :meth:`ZapAuthenticator.participate`
in its own nursery with its *domain* and keys: one participant binds the endpoint
and answers for every registered domain; the others wait, and when the serving one
stops (its actor stops or crashes) one of them takes over. Server sockets set
``ZAP_ENFORCE_DOMAIN``, so while no handler is bound handshakes fail: closed, never open.

Decisions: a CURVE handshake on a registered domain is accepted iff the client's
public key is in that domain's set; anything else on a registered domain is refused.
Requests for domains nobody registered are refused too, except NULL-mechanism ones,
which libzmq only sends for plain sockets that set a ZAP domain of their own; those
are accepted so such sockets keep working.

Key files use ZeroMQ's certificate format (``zmq.auth.create_certificates`` writes it,
and the aipara C++ client reads the same ``public-key = "..."`` lines).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import attrs
import trio
import zmq
import zmq.auth

from switchyard.runtime.config import existing_file
from switchyard.transports.zmq import ZmqSocket, default_context, open_socket

__all__ = [
    "ZAP_ENDPOINT",
    "CurveConfig",
    "CurveKeyError",
    "CurveKeys",
    "ZapAuthenticator",
    "authenticator_for",
    "curve_server_options",
    "enable_curve",
    "load_curve_keys",
]

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"
_Z85_KEY_LEN = 40

log = logging.getLogger("switchyard.transports.zmq_curve")


class CurveKeyError(ValueError):
    """A key file that is missing, unreadable or not a ZeroMQ CURVE certificate."""


@attrs.frozen
class CurveConfig:
    """Optional CURVE for one server socket (a nested ``[actor.config.curve]`` table).

    ``server_key_file``: a certificate holding the server's ``public-key`` and
    ``secret-key``. ``client_keys``: certificate files, files of Z85 keys (one per
    line, ``#`` comments), or directories whose ``*.key`` files are read; every
    ``public-key`` found may connect. ``domain`` names this server to the ZAP handler
    (empty: the owner picks one, e.g. the actor's name).
    """

    enabled: bool = False
    server_key_file: str = attrs.field(default="", metadata={"validate": existing_file})
    client_keys: list[str] = attrs.Factory(list)
    domain: str = ""


@attrs.frozen
class CurveKeys:
    """The loaded material: the server's key pair and the allowed client public keys (Z85)."""

    server_public: bytes
    server_secret: bytes
    allowed_clients: frozenset[bytes]
    domain: str


def _check_key(key: bytes, where: str) -> bytes:
    if len(key) != _Z85_KEY_LEN:
        raise CurveKeyError(f"{where}: a CURVE key is {_Z85_KEY_LEN} Z85 characters, got {len(key)}")
    try:
        zmq.utils.z85.decode(key)
    except Exception:
        raise CurveKeyError(f"{where}: not a Z85-encoded key") from None
    return key


def _public_keys_in(path: Path) -> list[bytes]:
    if path.is_dir():
        keys: list[bytes] = []
        for file in sorted(path.glob("*.key")):
            keys.extend(_public_keys_in(file))
        return keys
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise CurveKeyError(f"cannot read client key file {str(path)!r}: {exc.strerror or exc}") from None
    if b"public-key" in text:
        public, _secret = zmq.auth.load_certificate(path)
        return [_check_key(public, str(path))]
    keys = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith(b"#"):
            keys.append(_check_key(line, f"{path}:{number}"))
    return keys


def load_curve_keys(config: CurveConfig, *, default_domain: str = "switchyard") -> CurveKeys:
    """Read the files ``config`` names (blocking: call it in ``trio.to_thread``).

    Raises :class:`CurveKeyError` with the file and the problem.
    """
    domain = config.domain or default_domain
    if not config.server_key_file:
        raise CurveKeyError("curve is enabled but server_key_file is not set")
    path = Path(config.server_key_file)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"server key file {str(path)!r}: {exc}") from None
    if secret is None:
        raise CurveKeyError(f"server key file {str(path)!r} has no secret-key")
    allowed: set[bytes] = set()
    for entry in config.client_keys:
        allowed.update(_public_keys_in(Path(entry)))
    if not allowed:
        log.warning("CURVE domain %r allows no client keys: every client will be refused", domain)
    return CurveKeys(
        server_public=_check_key(public, str(path)),
        server_secret=_check_key(secret, str(path)),
        allowed_clients=frozenset(allowed),
        domain=domain,
    )


def curve_server_options(keys: CurveKeys) -> dict[str, object]:
    """Socket options (for ``EndpointConfig.socket_extra``) making a socket a CURVE server
    whose handshakes the ZAP handler decides, failing closed without one."""
    return {
        "CURVE_SERVER": 1,
        "CURVE_SECRETKEY": keys.server_secret,
        "CURVE_PUBLICKEY": keys.server_public,
        "ZAP_DOMAIN": keys.domain.encode(),
        "ZAP_ENFORCE_DOMAIN": 1,
    }


class ZapAuthenticator:
    """The ZAP handler of one ZeroMQ context. Get it with :func:`authenticator_for`."""

    def __init__(self, context: zmq.Context) -> None:
        self.context = context
        self._entries: dict[object, CurveKeys] = {}
        self._serving = False
        self._handover = trio.Event()
        self.stats = {"accepted": 0, "refused": 0, "malformed": 0}

    def allowed(self, domain: str) -> frozenset[bytes] | None:
        """The client keys allowed on ``domain`` (the union over its participants), or
        None if no participant registered it."""
        sets = [keys.allowed_clients for keys in self._entries.values() if keys.domain == domain]
        return frozenset().union(*sets) if sets else None

    async def participate(
        self, keys: CurveKeys, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Register ``keys.domain`` and keep it answered until cancelled.

        Start it with ``await nursery.start(auth.participate, keys)``: it returns once a
        handler is bound (this task's or another participant's), so a server socket
        bound afterwards never sees a handshake without one.
        """
        token = object()
        self._entries[token] = keys
        started = False
        try:
            while True:
                if not self._serving:
                    self._serving = True
                    try:
                        async with open_socket(zmq.REP, context=self.context) as sock:
                            await self._bind(sock)
                            if not started:
                                task_status.started()
                                started = True
                            await self._serve(sock)
                    finally:
                        self._serving = False
                        handover, self._handover = self._handover, trio.Event()
                        handover.set()
                else:
                    if not started:
                        task_status.started()
                        started = True
                    await self._handover.wait()
        finally:
            del self._entries[token]

    @staticmethod
    async def _bind(sock: ZmqSocket) -> None:
        # A just-closed handler's inproc name is released asynchronously by libzmq;
        # retry briefly rather than fail the takeover.
        for attempt in range(50):
            try:
                sock.bind(ZAP_ENDPOINT)
                return
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or attempt == 49:
                    raise
                await trio.sleep(0.01)

    async def _serve(self, sock: ZmqSocket) -> None:
        while True:
            frames = await sock.recv_multipart()
            await sock.send_multipart(self.decide(frames))

    def decide(self, frames: list[bytes]) -> list[bytes]:
        """The ZAP reply to one ZAP request (RFC 27), as frames."""
        if len(frames) < 6 or frames[0] != ZAP_VERSION:
            self.stats["malformed"] += 1
            request_id = frames[1] if len(frames) > 1 else b""
            return [ZAP_VERSION, request_id, b"500", b"malformed ZAP request", b"", b""]
        _version, request_id, domain_raw, address, _identity, mechanism, *credentials = frames
        domain = domain_raw.decode("utf-8", "replace")
        allowed = self.allowed(domain)
        if allowed is None:
            if mechanism == b"NULL":
                return [ZAP_VERSION, request_id, b"200", b"OK", b"", b""]
            return self._refuse(request_id, f"unknown ZAP domain {domain!r}", address)
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            return self._refuse(request_id, f"domain {domain!r} requires CURVE", address)
        client = zmq.utils.z85.encode(credentials[0])
        if client not in allowed:
            return self._refuse(request_id, "client key not allowed", address, client)
        self.stats["accepted"] += 1
        return [ZAP_VERSION, request_id, b"200", b"OK", client, b""]

    def _refuse(self, request_id: bytes, reason: str, address: bytes, client: bytes = b"") -> list[bytes]:
        self.stats["refused"] += 1
        log.warning(
            "CURVE: refused %s%s: %s",
            address.decode("utf-8", "replace") or "a peer",
            f" (key {client.decode()})" if client else "",
            reason,
        )
        return [ZAP_VERSION, request_id, b"400", reason.encode(), b"", b""]


_authenticators: dict[int, ZapAuthenticator] = {}


def authenticator_for(context: zmq.Context | None = None) -> ZapAuthenticator:
    """The process's ZAP authenticator for ``context`` (default: the shared context)."""
    ctx = context if context is not None else default_context()
    auth = _authenticators.get(id(ctx))
    if auth is None or auth.context is not ctx:
        auth = _authenticators[id(ctx)] = ZapAuthenticator(ctx)
    return auth


async def enable_curve(config: CurveConfig, nursery: trio.Nursery, *, default_domain: str) -> dict[str, object]:
    """Everything a server owner does for CURVE, or nothing if ``config.enabled`` is false.

    Loads the key files off the event loop, starts this owner's ZAP participant in
    ``nursery`` (so it lives and dies with the owner) and returns the socket options
    for the server socket (``EndpointConfig.socket_extra``). Raises
    :class:`CurveKeyError` for bad key files.
    """
    if not config.enabled:
        return {}
    keys = await trio.to_thread.run_sync(partial(load_curve_keys, config, default_domain=default_domain))
    await nursery.start(authenticator_for().participate, keys)
    return curve_server_options(keys)
