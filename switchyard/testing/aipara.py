"""Hypothesis strategies and client settings for testing against the aipara peers.

Strategies produce what the Rime plugin puts on the wire (as dicts; encode with
``json_codec``) and what it must survive: ``rime_request_dicts()``,
``ai_request_dicts()``, ``outbox_commands()``, ``hostile_bodies()``.

``CPP_CLIENT_OPTIONS`` / ``configure_like_cpp_client`` set a pyzmq socket up exactly
like the C++ client (docs/aipara.md), so tests talk to the server the way the IME does.

``serve_fake_completions`` runs a small OpenAI-compatible chat-completions server on
loopback (Trio + h11) that streams scripted replies as server-sent events, so the
``openai`` backend is tested over real HTTP without reaching the network.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import trio
import zmq
from hypothesis import strategies as st

from switchyard.protocols.codec import json_codec
from switchyard.services.aipara.commands import (
    ClipboardData,
    OutboxCommand,
    PasteExecuted,
    PasteFailed,
    Ping,
    SetConfig,
    SetOption,
    SetProperty,
)
from switchyard.testing.hostile_json import with_extreme_field

__all__ = [
    "AI_TIMEOUT_MS",
    "CPP_CLIENT_OPTIONS",
    "RIME_TIMEOUT_MS",
    "AiClient",
    "FakeCompletions",
    "FakeReply",
    "RimeClient",
    "ai_request_dicts",
    "chat_dicts",
    "command_dicts",
    "commit_dicts",
    "configure_like_cpp_client",
    "convert_dicts",
    "convert_message",
    "extreme_ai_bodies",
    "extreme_rime_bodies",
    "hostile_bodies",
    "json_values",
    "outbox_commands",
    "rime_request_dicts",
    "serve_fake_completions",
    "state_dicts",
    "switch_dicts",
]

RIME_TIMEOUT_MS = 100
AI_TIMEOUT_MS = 5000

# The C++ client's socket options (cppzmq): LINGER 0, reconnect 1 s..5 s, TCP keepalive
# on (idle 30 s, count 3, interval 10 s), high-water marks 100.
CPP_CLIENT_OPTIONS: dict[int, int] = {
    zmq.LINGER: 0,
    zmq.RECONNECT_IVL: 1000,
    zmq.RECONNECT_IVL_MAX: 5000,
    zmq.TCP_KEEPALIVE: 1,
    zmq.TCP_KEEPALIVE_IDLE: 30,
    zmq.TCP_KEEPALIVE_CNT: 3,
    zmq.TCP_KEEPALIVE_INTVL: 10,
    zmq.SNDHWM: 100,
    zmq.RCVHWM: 100,
}


def configure_like_cpp_client(sock: zmq.Socket, *, timeout_ms: int) -> zmq.Socket:
    """Apply the C++ client's options plus RCVTIMEO/SNDTIMEO = ``timeout_ms`` (100 for the
    Rime REQ socket, 5000 for the AI DEALER socket). Returns ``sock``."""
    for option, value in CPP_CLIENT_OPTIONS.items():
        sock.setsockopt(option, value)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
    return sock


class RimeClient:
    """A blocking REQ client set up like the C++ client's Rime state socket
    (100 ms send/receive timeouts). Use from a worker thread under Trio
    (``await trio.to_thread.run_sync(client.request, {...})``).

    Like the C++ client, a timed-out request tears the socket down and reconnects
    (REQ cannot send again without a reply); :meth:`request` then raises
    ``TimeoutError``. ``identity`` mimics the newer client's ``<client_id>-rime``.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        identity: bytes | None = None,
        timeout_ms: int = RIME_TIMEOUT_MS,
        curve: tuple[bytes, bytes, bytes] | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.identity = identity
        self.timeout_ms = timeout_ms
        self.curve = curve
        self.context = context or zmq.Context.instance()
        self.timeouts = 0
        self.sock = self._open()

    def _open(self) -> zmq.Socket:
        sock = configure_like_cpp_client(self.context.socket(zmq.REQ), timeout_ms=self.timeout_ms)
        if self.identity is not None:
            sock.setsockopt(zmq.IDENTITY, self.identity)
        if self.curve is not None:
            public, secret, server_public = self.curve
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server_public
        sock.connect(self.endpoint)
        return sock

    def request(self, message: dict[str, Any] | bytes | list[bytes]) -> dict[str, Any]:
        """Send one request (a dict is JSON-encoded; a list is sent multipart) and
        return the decoded reply (frames joined with ``\\n`` like the client)."""
        try:
            if isinstance(message, list):
                self.sock.send_multipart(message)
            else:
                self.sock.send(message if isinstance(message, bytes) else json_codec.encode(message))
            reply = self.sock.recv_multipart()
        except zmq.Again:
            self.timeouts += 1
            self.sock.close(linger=0)
            self.sock = self._open()
            raise TimeoutError(f"no reply within {self.timeout_ms} ms") from None
        return json.loads(b"\n".join(reply))

    def close(self) -> None:
        self.sock.close(linger=0)


class AiClient:
    """A blocking DEALER client set up like the C++ client's AI socket (5 s timeouts,
    single-frame requests). Use from a worker thread under Trio."""

    def __init__(
        self,
        endpoint: str,
        *,
        identity: bytes | None = None,
        timeout_ms: int = AI_TIMEOUT_MS,
        curve: tuple[bytes, bytes, bytes] | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.sock = configure_like_cpp_client(
            (context or zmq.Context.instance()).socket(zmq.DEALER), timeout_ms=timeout_ms
        )
        if identity is not None:
            self.sock.setsockopt(zmq.IDENTITY, identity)
        if curve is not None:
            public, secret, server_public = curve
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = (
                public,
                secret,
                server_public,
            )
        self.sock.connect(endpoint)

    def send(self, message: dict[str, Any] | bytes) -> None:
        self.sock.send(message if isinstance(message, bytes) else json_codec.encode(message))

    def recv(self, timeout_ms: int | None = None) -> dict[str, Any]:
        """One reply, decoded; raises ``TimeoutError`` if none comes in time."""
        if timeout_ms is not None and not self.sock.poll(timeout_ms):
            raise TimeoutError(f"no reply within {timeout_ms} ms")
        try:
            frames = self.sock.recv_multipart()
        except zmq.Again:
            raise TimeoutError("no reply within the socket timeout") from None
        return json.loads(b"\n".join(frames))

    def until_final(self) -> list[dict[str, Any]]:
        """Every reply up to and including the one with ``is_final: true``."""
        replies = [self.recv()]
        while not replies[-1].get("is_final"):
            replies.append(self.recv())
        return replies

    def close(self) -> None:
        self.sock.close(linger=0)


_text = st.text(max_size=40)
_name = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)
_hanzi = st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5), max_size=12)
_timestamps = st.integers(min_value=0, max_value=2**53)


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Arbitrary JSON values (finite floats only)."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(2**53), 2**53)
        | st.floats(allow_nan=False, allow_infinity=False)
        | _text
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
        max_leaves=max_leaves,
    )


def switch_dicts() -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda name, state: {"name": name, "type": "simple", "state": state, "state_index": int(state)},
        _name,
        st.booleans(),
    )


def _properties() -> st.SearchStrategy[Any]:
    as_object = st.dictionaries(_name, _text, max_size=4)
    as_list = st.lists(st.builds(lambda n, v: {"name": n, "type": "string", "value": v}, _name, _text), max_size=4)
    return as_object | as_list


def _embedded_command() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "messege_type": st.just("command"),
            "command": _name,
            "timestamp": _timestamps,
            "client_id": st.just("lua_tcp_client"),
        },
        optional={"command_value": _text},
    )


def state_dicts() -> st.SearchStrategy[dict[str, Any]]:
    """``state`` requests as the C++/Lua client builds them."""
    return st.fixed_dictionaries(
        {
            "messege_type": st.just("state"),
            "is_composing": st.booleans(),
            "timestamp": _timestamps,
            "switches_option": st.lists(switch_dicts(), max_size=4),
            "properties": _properties(),
        },
        optional={"command_message": _embedded_command()},
    )


def commit_dicts() -> st.SearchStrategy[dict[str, Any]]:
    """``commit`` requests: a state plus what was committed."""
    return st.builds(
        lambda base, app, pinyin, text: {
            **base,
            "messege_type": "commit",
            "current_app": app,
            "commit_pinyin": pinyin,
            "commit_text": text,
        },
        state_dicts(),
        _text,
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz'", max_size=24),
        _hanzi,
    )


def command_dicts() -> st.SearchStrategy[dict[str, Any]]:
    """Top-level ``command`` requests (e.g. ``paste``)."""
    return st.fixed_dictionaries(
        {
            "messege_type": st.just("command"),
            "command": st.sampled_from(["paste"]) | _name,
            "timestamp": _timestamps,
            "client_id": st.just("lua_tcp_client"),
        }
    )


def rime_request_dicts() -> st.SearchStrategy[dict[str, Any]]:
    """Any well-formed Rime-channel request, including the client's pong."""
    return state_dicts() | commit_dicts() | command_dicts() | st.just({"response": "pong"})


def convert_dicts() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "messege_type": st.just("convert"),
            "schema_name": _text,
            "shuru_schema": _text,
            "confirmed_pos_input": st.text(alphabet="abcdefghijklmnopqrstuvwxyz", max_size=24),
            "stream_mode": st.just(True),
            "timestamp": _timestamps,
            "timeout": st.floats(min_value=0, max_value=10),
        },
        optional={"candidates_text": st.lists(_hanzi, max_size=3)},
    )


def chat_dicts() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"messege_type": st.just("chat"), "commit_text": _text, "assistant_id": _name, "timestamp": _timestamps},
        optional={"response_key": _name},
    )


def ai_request_dicts() -> st.SearchStrategy[dict[str, Any]]:
    return convert_dicts() | chat_dicts()


def convert_message(pinyin: str, **extra: Any) -> dict[str, Any]:
    """A streamed ``convert`` request as the C++ client sends it; ``extra`` overrides fields."""
    return {
        "messege_type": "convert",
        "schema_name": "rime_ice",
        "shuru_schema": "quanpin",
        "confirmed_pos_input": pinyin,
        "stream_mode": True,
        "timestamp": 1,
        "timeout": 5.0,
        **extra,
    }


def outbox_commands() -> st.SearchStrategy[OutboxCommand]:
    """Every kind of command another actor may queue for a client."""
    return st.one_of(
        st.builds(SetOption, option_name=_name, option_value=st.booleans()),
        st.builds(SetProperty, property_name=_name, property_value=_text),
        st.builds(SetConfig, config_path=_name, config_value=json_values(4)),
        st.builds(ClipboardData, text=_text, success=st.booleans(), error=st.none() | _text),
        st.just(PasteExecuted()),
        st.builds(PasteFailed, error=_text),
        st.just(Ping()),
    )


def _mutated(valid: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Valid requests with one field replaced by a value of an arbitrary type."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        obj = draw(valid)
        key = draw(st.sampled_from(sorted(obj)))
        obj[key] = draw(json_values(3))
        return json_codec.encode(obj)

    return build()


def hostile_bodies() -> st.SearchStrategy[bytes]:
    """What a broken or hostile peer may send: arbitrary bytes, truncated or non-object
    JSON, unknown kinds, well-formed requests with mistyped fields, and good requests."""
    good = (rime_request_dicts() | ai_request_dicts()).map(json_codec.encode)
    return st.one_of(
        st.binary(max_size=200),
        json_values().map(json_codec.encode),
        good.map(lambda b: b[: max(0, len(b) // 2)]),
        st.builds(lambda k: json_codec.encode({"messege_type": k}), json_values(2)),
        _mutated(rime_request_dicts() | ai_request_dicts()),
        extreme_rime_bodies(),
        extreme_ai_bodies(),
        good,
    )


def extreme_rime_bodies() -> st.SearchStrategy[bytes]:
    """Rime requests with a numeric field (or any field) holding an out-of-range value."""
    return with_extreme_field(rime_request_dicts(), ("timestamp",)) | with_extreme_field(rime_request_dicts())


def extreme_ai_bodies() -> st.SearchStrategy[bytes]:
    """AI requests with ``timestamp``/``timeout`` (or any field) out of range."""
    return with_extreme_field(ai_request_dicts(), ("timestamp", "timeout")) | with_extreme_field(ai_request_dicts())


# ---------------------------------------------------------------------------
# A scripted OpenAI-compatible streaming server


@attrs.frozen
class FakeReply:
    """What the fake server answers to one request.

    ``chunks`` are content pieces, each sent as one ``chat.completion.chunk`` event
    ``delay`` seconds apart, then ``data: [DONE]``. ``status`` other than 200 sends
    ``error_body`` as JSON instead. ``error_event`` sends an in-stream error object
    after the chunks. ``raw`` (if set) is sent verbatim as the response body.
    """

    chunks: tuple[str, ...] = ()
    delay: float = 0.0
    status: int = 200
    error_body: dict[str, Any] = attrs.Factory(lambda: {"error": {"message": "scripted failure"}})
    error_event: str | None = None
    raw: bytes | None = None


@attrs.define
class FakeCompletions:
    """A running fake server: its ``base_url`` and every request body it received."""

    base_url: str
    requests: list[dict[str, Any]] = attrs.Factory(list)
    headers: list[dict[str, str]] = attrs.Factory(list)


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


@asynccontextmanager
async def serve_fake_completions(script: Callable[[dict[str, Any]], FakeReply]) -> AsyncIterator[FakeCompletions]:
    """Serve ``POST /v1/chat/completions`` on 127.0.0.1 (a free port) until the block ends.

    ``script(request_json)`` decides each reply. One request per connection.
    """
    server: FakeCompletions | None = None

    async def serve(stream: trio.SocketStream) -> None:
        assert server is not None  # set before the first connection can be accepted
        await _serve_one(stream, script, server)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, serve, 0)
        port = listeners[0].socket.getsockname()[1]
        server = FakeCompletions(base_url=f"http://127.0.0.1:{port}/v1")
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


async def _serve_one(
    stream: trio.SocketStream, script: Callable[[dict[str, Any]], FakeReply], server: FakeCompletions
) -> None:
    try:
        await _exchange(stream, script, server)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client hung up mid-reply (e.g. its convert was superseded)


async def _exchange(
    stream: trio.SocketStream, script: Callable[[dict[str, Any]], FakeReply], server: FakeCompletions
) -> None:
    conn = h11.Connection(h11.SERVER)
    body = b""
    request: h11.Request | None = None
    async with stream:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data:
                    return
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                return
        assert request is not None
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            payload = {"_unparseable": body.decode("utf-8", "replace")}
        server.requests.append(payload)
        server.headers.append({k.decode(): v.decode() for k, v in request.headers})
        if request.target != b"/v1/chat/completions" or request.method != b"POST":
            reply = FakeReply(status=404, error_body={"error": {"message": f"no route {request.target.decode()}"}})
        else:
            reply = script(payload)

        async def send(event: Any) -> None:
            data = conn.send(event)
            if data:
                await stream.send_all(data)

        if reply.status != 200:
            body_out = json.dumps(reply.error_body).encode()
            await send(
                h11.Response(
                    status_code=reply.status,
                    headers=[
                        ("content-type", "application/json"),
                        ("content-length", str(len(body_out))),
                        ("connection", "close"),
                    ],
                )
            )
            await send(h11.Data(data=body_out))
            await send(h11.EndOfMessage())
            return
        await send(
            h11.Response(
                status_code=200,
                headers=[("content-type", "text/event-stream"), ("cache-control", "no-cache"), ("connection", "close")],
            )
        )
        if reply.raw is not None:
            await send(h11.Data(data=reply.raw))
        else:
            for index, piece in enumerate(reply.chunks):
                if reply.delay:
                    await trio.sleep(reply.delay)
                chunk = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "model": payload.get("model", ""),
                    "choices": [
                        {
                            "index": 0,
                            "delta": ({"role": "assistant"} if index == 0 else {}) | {"content": piece},
                            "finish_reason": None,
                        }
                    ],
                }
                await send(h11.Data(data=_sse(chunk)))
            if reply.error_event is not None:
                await send(h11.Data(data=_sse({"error": {"message": reply.error_event}})))
            else:
                final = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                }
                await send(h11.Data(data=_sse(final) + b"data: [DONE]\n\n"))
        await send(h11.EndOfMessage())
