"""CURVE on both aipara sockets: key files from the manifest, the Trio ZAP handler,
and clients with unknown keys (or no CURVE at all) getting nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import zmq
import zmq.auth

from switchyard.runtime import open_system
from switchyard.services.aipara.ai_stream import AiStreamActor
from switchyard.services.aipara.rime_state import RimeStateActor
from switchyard.testing import free_tcp_endpoint, run_manifest
from switchyard.testing.aipara import AiClient, RimeClient
from switchyard.transports.zmq import SocketOptions, open_socket
from switchyard.transports.zmq_curve import (
    CurveConfig,
    CurveKeyError,
    CurveKeys,
    ZapAuthenticator,
    authenticator_for,
    curve_server_options,
    load_curve_keys,
)

STATE = {"messege_type": "state", "is_composing": False}
CONVERT = {"messege_type": "convert", "confirmed_pos_input": "nihao", "stream_mode": True, "timeout": 3}


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, object]:
    """Server and client certificates the way ``zmq.auth`` (and czmq) write them."""
    server_dir, allowed_dir, other_dir = tmp_path / "server", tmp_path / "allowed", tmp_path / "other"
    for d in (server_dir, allowed_dir, other_dir):
        d.mkdir()
    server_public_file, server_secret_file = zmq.auth.create_certificates(server_dir, "server")
    _good_public_file, good_secret_file = zmq.auth.create_certificates(allowed_dir, "client")
    Path(good_secret_file).rename(tmp_path / "client.key_secret")  # only public keys in the allowed dir
    _, bad_secret_file = zmq.auth.create_certificates(other_dir, "intruder")
    server_public, _ = zmq.auth.load_certificate(server_public_file)
    good = zmq.auth.load_certificate(tmp_path / "client.key_secret")
    bad = zmq.auth.load_certificate(bad_secret_file)
    return {
        "curve": {"enabled": True, "server_key_file": str(server_secret_file), "client_keys": [str(allowed_dir)]},
        "good": (good[0], good[1], server_public),
        "bad": (bad[0], bad[1], server_public),
    }


async def in_thread(fn, *args):
    return await trio.to_thread.run_sync(fn, *args)


def rime_round_trip(endpoint: str, curve, timeout_ms: int = 1000):
    client = RimeClient(endpoint, identity=b"curve-rime", timeout_ms=timeout_ms, curve=curve)
    try:
        return client.request(STATE)
    finally:
        client.close()


def ai_first_reply(endpoint: str, curve, timeout_ms: int = 1000):
    client = AiClient(endpoint, curve=curve, timeout_ms=timeout_ms)
    try:
        client.send(CONVERT)
        return client.recv(timeout_ms)
    finally:
        client.close()


async def test_both_services_accept_known_keys_and_give_unknown_keys_nothing(keys):
    async with open_system("t", grace_period=1) as system:
        rime_ep, ai_ep = free_tcp_endpoint(), free_tcp_endpoint()
        await system.spawn(RimeStateActor, name="rime_state", config={"endpoint": rime_ep, "curve": keys["curve"]})
        await system.spawn(
            AiStreamActor, name="ai_stream", config={"endpoint": ai_ep, "curve": keys["curve"], "local": {"hmm": False}}
        )
        reply = await in_thread(rime_round_trip, rime_ep, keys["good"])
        assert reply["messege_type"] == "command_response" and reply["client_id"] == "curve-rime"
        assert (await in_thread(ai_first_reply, ai_ep, keys["good"]))["messege_type"] == "convert_result_stream"
        # An unknown key: the handshake is refused, so the request never arrives.
        with pytest.raises(TimeoutError):
            await in_thread(rime_round_trip, rime_ep, keys["bad"], 300)
        with pytest.raises(TimeoutError):
            await in_thread(ai_first_reply, ai_ep, keys["bad"], 300)
        # No CURVE at all: nothing either.
        with pytest.raises(TimeoutError):
            await in_thread(rime_round_trip, rime_ep, None, 300)
        auth = authenticator_for()
        assert auth.stats["refused"] >= 2 and auth.stats["accepted"] >= 2
        # The good client still works after the refusals.
        assert (await in_thread(rime_round_trip, rime_ep, keys["good"]))["response"] == "rime_state_received"


async def test_handler_hands_over_when_its_participant_stops(keys):
    """Actors share the one ZAP endpoint per context: when the participant serving it
    stops, another takes over, and the stopped one's domain is forgotten."""
    auth = authenticator_for()
    first = load_curve_keys(CurveConfig(**keys["curve"]), default_domain="first")
    second = load_curve_keys(CurveConfig(**keys["curve"]), default_domain="second")
    endpoint = free_tcp_endpoint()

    def ask_echo(curve) -> bytes:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = curve
        sock.connect(endpoint)
        try:
            sock.send(b"ping")
            if not sock.poll(1000):
                raise TimeoutError
            return sock.recv()
        finally:
            sock.close()

    async with trio.open_nursery() as nursery:
        first_scope = trio.CancelScope()

        async def run_first(task_status=trio.TASK_STATUS_IGNORED):
            with first_scope:
                await auth.participate(first, task_status=task_status)

        await nursery.start(run_first)
        await nursery.start(auth.participate, second)
        options = SocketOptions(extra=curve_server_options(second))
        async with open_socket(zmq.ROUTER, bind=endpoint, options=options) as router:

            async def echo():
                while True:
                    await router.send_multipart(await router.recv_multipart())

            nursery.start_soon(echo)
            assert await in_thread(ask_echo, keys["good"]) == b"ping"
            first_scope.cancel()
            with trio.fail_after(2):
                while auth.allowed("first") is not None:
                    await trio.sleep(0.01)
            assert await in_thread(ask_echo, keys["good"]) == b"ping"
            with pytest.raises(TimeoutError):
                await in_thread(ask_echo, keys["bad"])
            nursery.cancel_scope.cancel()


async def test_curve_from_a_manifest(keys, tmp_path):
    rime_ep = free_tcp_endpoint()
    manifest = tmp_path / "aipara.toml"
    curve = keys["curve"]
    manifest.write_text(
        f"""
[app]
name = "aipara-curve"
[[actor]]
name = "rime_state"
kind = "rime_state"
[actor.config]
endpoint = "{rime_ep}"
[actor.config.curve]
enabled = true
server_key_file = "{curve["server_key_file"]}"
client_keys = ["{curve["client_keys"][0]}"]
"""
    )
    async with run_manifest(manifest):
        assert (await in_thread(rime_round_trip, rime_ep, keys["good"]))["client_id"] == "curve-rime"
        with pytest.raises(TimeoutError):
            await in_thread(rime_round_trip, rime_ep, keys["bad"], 300)


def test_key_files_are_checked(tmp_path, keys):
    with pytest.raises(CurveKeyError, match="server_key_file is not set"):
        load_curve_keys(CurveConfig(enabled=True))
    with pytest.raises(CurveKeyError, match="server key file"):
        load_curve_keys(CurveConfig(enabled=True, server_key_file=str(tmp_path / "missing")))
    public_only = zmq.auth.create_certificates(tmp_path, "pub")[0]
    with pytest.raises(CurveKeyError, match="no secret-key"):
        load_curve_keys(CurveConfig(enabled=True, server_key_file=str(public_only)))
    listed = tmp_path / "clients.txt"
    good_public = keys["good"][0]
    listed.write_bytes(b"# one key per line\n" + good_public + b"\n")
    loaded = load_curve_keys(
        CurveConfig(enabled=True, server_key_file=keys["curve"]["server_key_file"], client_keys=[str(listed)]),
        default_domain="d",
    )
    assert loaded.allowed_clients == frozenset({good_public}) and loaded.domain == "d"
    listed.write_bytes(b"too-short\n")
    with pytest.raises(CurveKeyError, match="40 Z85 characters"):
        load_curve_keys(
            CurveConfig(enabled=True, server_key_file=keys["curve"]["server_key_file"], client_keys=[str(listed)])
        )


def test_zap_decisions():
    auth = ZapAuthenticator(zmq.Context.instance())
    public, _secret = zmq.curve_keypair()
    raw = zmq.utils.z85.decode(public)
    auth._entries[object()] = CurveKeys(
        server_public=public, server_secret=public, allowed_clients=frozenset({public}), domain="dom"
    )
    ok = auth.decide([b"1.0", b"7", b"dom", b"127.0.0.1", b"", b"CURVE", raw])
    assert ok[:3] == [b"1.0", b"7", b"200"] and ok[4] == public
    other = zmq.utils.z85.decode(zmq.curve_keypair()[0])
    assert auth.decide([b"1.0", b"8", b"dom", b"", b"", b"CURVE", other])[2] == b"400"
    assert auth.decide([b"1.0", b"9", b"dom", b"", b"", b"NULL"])[2] == b"400"
    assert auth.decide([b"1.0", b"10", b"elsewhere", b"", b"", b"NULL"])[2] == b"200"
    assert auth.decide([b"1.0", b"11", b"elsewhere", b"", b"", b"CURVE", raw])[2] == b"400"
    assert auth.decide([b"2.0", b"12"])[2] == b"500"
    assert auth.decide([])[2] == b"500"
