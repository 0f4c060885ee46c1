"""Real C++17 clients, compiled here.

tests/tensor/cpp/tensor_session_client.cpp plays Tech Renaissance's PythonSession file steps
(tmp-then-rename requests, ``<tag>.tsr`` inputs, 32 ms back-off polling for
``response.json``, the naive ``"params":`` scan, reading ``r.tsr``) and launches the
server the way the original does: ``std::system("python3 \\"<script>\\" <id> &")``.

tests/tensor/cpp/tensor_zmq_client.cpp is a cppzmq DEALER speaking to the ZeroMQ tensor
session actor with TSR header + data frames.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from switchyard.services.tensor.file_client import DEFAULT_SCRIPT
from switchyard.services.tensor.zmq_session import TensorSessionActor, TensorSessionConfig
from switchyard.testing import ipc_endpoint, run_system
from switchyard.testing.cpp import compile_cpp

CPP_SOURCE = Path(__file__).parent / "cpp" / "tensor_session_client.cpp"
CPP_ZMQ_SOURCE = Path(__file__).parent / "cpp" / "tensor_zmq_client.cpp"

DEMO_SERVER = '''\
import sys
from switchyard.services.tensor.file_session import TensorSessionServer


class DemoServer(TensorSessionServer):
    """An existing server moved over: one extra command with two tensor results."""

    def main_logic(self, command, parameters):
        if command == "sum_diff":
            tensors = self.get_tensors(parameters, 2)
            if tensors is None:
                return False
            a, b = tensors
            self.send_tensors(a + b, a - b)
            return True
        return super().main_logic(command, parameters)


if __name__ == "__main__":
    sys.exit(DemoServer().run(sys.argv[1]))
'''


@pytest.fixture(scope="module")
def cpp_client(tmp_path_factory) -> Path:
    return compile_cpp(CPP_SOURCE, tmp_path_factory.mktemp("cpp") / "tensor_session_client")


def _run_client(cpp_client: Path, tmp_path: Path, script: Path, session_id: str, *extra: str) -> str:
    root = tmp_path / "python_session"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "python3"  # the client runs plain "python3": make it this venv's python
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["SWITCHYARD_SESSION_ROOT"] = str(root)
    session = root / f"tr_session_{session_id}"
    try:
        result = subprocess.run(
            [str(cpp_client), str(root), session_id, str(script), *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        # The server was started by the C++ program; make sure it is gone.
        if session.is_dir() and (session / "status.txt").read_text() != "terminated":
            (session / "exit.flag").touch()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and (session / "status.txt").read_text() != "terminated":
                time.sleep(0.05)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_cpp_client_against_the_shipped_script(cpp_client, tmp_path):
    out = _run_client(cpp_client, tmp_path, DEFAULT_SCRIPT, "cpp_basic", "--basic")
    assert "PASS hello (JSON)" in out and "PASS matmul 4x3 @ 3x5 = 9.0" in out
    assert "ALL PASSED 0" in out


def test_cpp_client_against_a_subclassed_server(cpp_client, tmp_path):
    script = tmp_path / "python_server.py"
    script.write_text(DEMO_SERVER)
    out = _run_client(cpp_client, tmp_path, script, "cpp_full")
    for line in (
        "PASS hello (plain text)",
        "PASS two results answer r0,r1 (got 'r0,r1')",
        "PASS r1 = a - b",
        "PASS unknown command: status 'error:Failed to process command bogus'",
        "PASS still serving after bad input",
        "PASS exit: status terminated",
    ):
        assert line in out, out
    assert "ALL PASSED 0" in out


@pytest.fixture(scope="module")
def cpp_zmq_client(tmp_path_factory) -> Path:
    return compile_cpp(CPP_ZMQ_SOURCE, tmp_path_factory.mktemp("cppzmq") / "tensor_zmq_client", libs=["zmq"])


async def test_cpp_zmq_client_against_the_actor(cpp_zmq_client):
    endpoint = ipc_endpoint()
    async with run_system("tensor-cpp") as system:
        await system.spawn(TensorSessionActor, name="tensor", config=TensorSessionConfig(endpoint=endpoint))
        with trio.fail_after(60):
            result = await trio.run_process(
                [str(cpp_zmq_client), endpoint], capture_stdout=True, capture_stderr=True, check=False
            )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "PASS matmul 4x3 @ 3x5 = 9.0" in out and "ALL PASSED 0" in out
