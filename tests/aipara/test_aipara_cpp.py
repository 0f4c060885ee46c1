"""A real C++ client (cppzmq + libzmq), compiled here, against both aipara services.

tests/aipara/cpp/aipara_client.cpp sets its sockets up like the aipara plugin's C++ client
(REQ 100 ms on the Rime port, DEALER 5000 ms on the AI port, LINGER 0, keepalive,
HWM 100) and sends what it sends. Skips with the reason when g++ or the
libzmq3-dev/cppzmq-dev headers are missing; CI (.ci/run) installs them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import partial
from pathlib import Path

import pytest
import trio
import zmq.auth

from switchyard.runtime import open_system
from switchyard.services.aipara.ai_stream import AiStreamActor
from switchyard.services.aipara.protocol import SetOption
from switchyard.services.aipara.rime_state import GetClient, ListClients, QueueCommand, RimeStateActor
from switchyard.testing import free_tcp_endpoint
from switchyard.testing.cpp import compile_cpp

CPP_SOURCE = Path(__file__).parent / "cpp" / "aipara_client.cpp"


@pytest.fixture(scope="module")
def cpp_client(tmp_path_factory) -> Path:
    return compile_cpp(CPP_SOURCE, tmp_path_factory.mktemp("cpp") / "aipara_client", libs=["zmq"])


async def drive(cpp_client: Path, rime_ep: str, ai_ep: str, rime, *extra: str) -> list[str]:
    """Run the C++ client; after its first Rime reply, queue a command for it."""
    lines: list[str] = []
    command = [str(cpp_client), rime_ep, ai_ep, *extra]
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(
            partial(trio.run_process, command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, check=False)
        )
        buffer = b""

        async def next_line() -> str:
            nonlocal buffer
            while b"\n" not in buffer:
                chunk = await proc.stdout.receive_some(65536)
                if not chunk:
                    raise AssertionError(f"client ended early; output so far: {lines}")
                buffer += chunk
            line, buffer = buffer.split(b"\n", 1)
            lines.append(line.decode())
            return lines[-1]

        with trio.fail_after(30):
            while not (await next_line()).startswith("RIME "):
                pass
            (client,) = await rime.ask(ListClients())
            await rime.ask(QueueCommand(SetOption("ascii_mode", True), client.client_id))
            await proc.stdin.send_all(b"go\n")
            while await next_line() != "DONE":
                pass
            assert await proc.wait() == 0
    return lines


def parse(lines: list[str], prefix: str) -> list[dict]:
    return [json.loads(line[len(prefix) + 1 :]) for line in lines if line.startswith(prefix + " ")]


async def test_cpp_client_against_both_services(cpp_client):
    async with open_system("t", grace_period=1) as system:
        rime_ep, ai_ep = free_tcp_endpoint(), free_tcp_endpoint()
        rime = await system.spawn(RimeStateActor, name="rime_state", config={"endpoint": rime_ep})
        await system.spawn(AiStreamActor, name="ai_stream", config={"endpoint": ai_ep})
        lines = await drive(cpp_client, rime_ep, ai_ep, rime)
        first, second = parse(lines, "RIME")
        assert first["messege_type"] == "command_response" and first["command_messege"] == []
        client_id = first["client_id"]
        assert client_id.startswith("rime-cpp-") and client_id.endswith("-rime")
        assert [(c["command"], c["option_name"], c["option_value"]) for c in second["command_messege"]] == [
            ("set_option", "ascii_mode", True)
        ]
        state = await rime.ask(GetClient(client_id))
        assert state.last_commit_text == "你好" and state.current_app == "gedit"
        assert state.switches[0].name == "ascii_punct" and state.properties == {"keepon_chat_trigger": ""}
        ai = parse(lines, "AI")
        converts, chat = ai[:-1], ai[-1]
        assert converts[-1]["is_final"] and all(not m["is_final"] for m in converts[:-1])
        assert "你好世界" in [c["value"] for c in converts[-1]["ai_candidates"]]
        assert chat["response_key"] == "cpp-1" and chat["status"] == "error"


async def test_cpp_client_with_curve(cpp_client, tmp_path):
    server_dir, client_dir = tmp_path / "server", tmp_path / "client"
    server_dir.mkdir()
    client_dir.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(server_dir, "server")
    client_public, client_secret = zmq.auth.create_certificates(client_dir, "client")
    # The plugin reads client.key, client_secret.key and server_public.key from one directory.
    Path(client_secret).rename(client_dir / "client_secret.key")
    shutil.copy(server_public, client_dir / "server_public.key")
    curve = {"enabled": True, "server_key_file": str(server_secret), "client_keys": [str(client_public)]}
    async with open_system("t", grace_period=1) as system:
        rime_ep, ai_ep = free_tcp_endpoint(), free_tcp_endpoint()
        rime = await system.spawn(RimeStateActor, name="rime_state", config={"endpoint": rime_ep, "curve": curve})
        await system.spawn(AiStreamActor, name="ai_stream", config={"endpoint": ai_ep, "curve": curve})
        lines = await drive(cpp_client, rime_ep, ai_ep, rime, str(client_dir))
    assert len(parse(lines, "RIME")) == 2
    assert parse(lines, "AI")[-2]["is_final"]
