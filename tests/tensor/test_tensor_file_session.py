"""The file-session server against the Python session client (and raw file steps)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import trio

from switchyard.services.tensor.file_client import DEFAULT_SCRIPT, PythonSession
from switchyard.services.tensor.file_session import ENV_ROOT, resolve_session_root
from switchyard.services.tensor.server import (
    SessionBusyError,
    SessionError,
    TechRenaissanceServer,
    TensorSessionServer,
)


class DemoServer(TensorSessionServer):
    """A subclass the way existing TechRenaissanceServer code is written."""

    def main_logic(self, command: str, parameters: str) -> bool:
        if command == "sum_diff":
            tensors = self.get_tensors(parameters, 2)
            if tensors is None:
                return False
            a, b = tensors
            self.send_tensors(a + b, a - b)
            return True
        if command == "twice":
            self.write_response("", "first")
            self.write_response("", "second")
            return True
        if command == "explode":
            raise RuntimeError("kaboom")
        return super().main_logic(command, parameters)


async def call(fn, *args, **kwargs):
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


@asynccontextmanager
async def serving(root: Path, server: TensorSessionServer | None = None, sid: str = "t"):
    server = server or DemoServer(root=root)
    async with trio.open_nursery() as nursery:
        directory = await nursery.start(server.serve, sid)
        client = PythonSession(session_id=sid, root=root, poll_interval=0.0005)
        yield client, directory
        nursery.cancel_scope.cancel()


async def test_hello_json_and_plain_text(tmp_path):
    async with serving(tmp_path) as (client, _):
        assert await call(client.fetch_response, {"cmd": "hello", "params": "world"}) == "Hello World"
        assert await call(client.fetch_response, "hello tech renaissance") == "Hello Tech Renaissance"
        assert (
            await call(client.fetch_response, {"cmd": "hello", "params": 'say "hi" \\ 你好'})
            == 'Hello Say "Hi" \\ 你好'
        )


async def test_matmul_and_add(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal((3, 5)).astype(np.float32)
    async with serving(tmp_path) as (client, directory):
        r = await call(client.calculate, "matmul", a, b)
        np.testing.assert_allclose(r, a @ b, rtol=1e-5)
        assert r.dtype == np.float32
        assert not (directory / "a.tsr").exists() and not (directory / "b.tsr").exists()
        assert (directory / "r.tsr").exists()
        x = np.arange(12, dtype=np.int32).reshape(3, 4)
        y = np.arange(4, dtype=np.int32)
        r = await call(client.calculate, "add", x, y)  # broadcasting
        assert r.dtype == np.int32 and np.array_equal(r, x + y)
        big = np.ones((512, 512), np.float32)  # 1 MiB: loaded memory-mapped
        r = await call(client.calculate, "add", big, big)
        assert r.shape == (512, 512) and float(r.sum()) == 2 * 512 * 512


async def test_a_new_result_leaves_the_held_one_alone_and_nothing_behind(tmp_path):
    stale = tmp_path / "tr_session_t" / ".r.tsr.999.0.old"  # set aside by a crashed server
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x" * 100)
    big = np.arange(1 << 18, dtype=np.float32).reshape(512, 512)  # 1 MiB: mapped
    async with serving(tmp_path) as (client, directory):
        first = await call(client.calculate, "add", big, big)
        assert not stale.exists()
        second = await call(client.calculate, "add", big, -big)
        # the first result's file was replaced while `first` still maps it
        assert np.array_equal(first, 2 * big) and not second.any()
        # the old file goes once the answer is out; the next answer comes after that
        assert await call(client.fetch_response, "hello you") == "Hello You"
        assert sorted(p.name for p in directory.glob("*.tsr*")) == ["r.tsr"]
        assert not list(directory.glob(".*.old")) and not list(directory.glob(".*.tmp"))


async def test_two_results_are_comma_separated(tmp_path):
    async with serving(tmp_path) as (client, directory):
        await call(client.send_tensor, np.full((2, 3), 5, np.float32), "a")
        await call(client.send_tensor, np.full((2, 3), 2, np.float32), "b")
        await call(client.send_request, {"cmd": "sum_diff", "params": "a,b"})
        response = directory / "response.json"
        with trio.fail_after(5):
            while not response.exists():
                await trio.sleep(0.001)
        assert response.read_bytes() == b'{"cmd": "", "params": "r0,r1"}'
        s, d = await call(client.wait_for_tensors)
        assert np.all(s == 7) and np.all(d == 3)


@pytest.mark.parametrize(
    ("prepare", "request_body", "error"),
    [
        (None, {"cmd": "bogus", "params": "x"}, "error:Failed to process command bogus"),
        ("truncated", {"cmd": "matmul", "params": "a,b"}, "TSR length"),
        ("badmagic", {"cmd": "matmul", "params": "a,b"}, "TSR magic"),
        (None, {"cmd": "matmul", "params": "a,nope"}, "'nope' not found"),
        (None, {"cmd": "matmul", "params": "a"}, "expected 2 tensor tag(s)"),
        (None, {"cmd": "matmul", "params": "../a,b"}, "invalid tensor tag"),
        ("shapes", {"cmd": "matmul", "params": "a,b"}, "matmul:"),
        (None, {"cmd": "sum_diff", "params": "only_one"}, "expected 2 tensor tag(s)"),
        (None, {"cmd": "explode"}, "error:kaboom"),
        (None, '{"cmd": "hello", "params": 5}', "params"),
        (None, "\udcff", None),  # replaced below by invalid UTF-8 bytes
    ],
)
async def test_bad_input_sets_error_status_and_server_keeps_serving(tmp_path, prepare, request_body, error):
    async with serving(tmp_path) as (client, directory):
        good = np.ones((2, 2), np.float32)
        await call(client.send_tensor, good, "a")
        await call(client.send_tensor, good, "b")
        if prepare == "truncated":
            os.truncate(directory / "a.tsr", 64 + 3)
        elif prepare == "badmagic":
            with open(directory / "a.tsr", "r+b") as f:
                f.write(b"XXXX")
        elif prepare == "shapes":
            await call(client.send_tensor, np.ones((3, 3), np.float32), "b")
        if request_body == "\udcff":
            (directory / "request.tmp").write_bytes(b"\xff\xfe bad")
            os.replace(directory / "request.tmp", directory / "request.json")
            error = "not UTF-8"
            with pytest.raises(SessionError) as info:
                await call(client.wait_for_response, 3)
        else:
            with pytest.raises(SessionError) as info:
                await call(client.fetch_response, request_body, 3)
        assert str(info.value).startswith("error:") and error in str(info.value)
        assert client.status() == str(info.value)
        assert await call(client.wait_until_ready, 2)  # the bad request was consumed
        assert not (directory / "response.json").exists()  # and got no answer
        assert await call(client.fetch_response, "hello again") == "Hello Again"
        assert client.status() == "ready"


async def test_an_unreadable_request_is_reported_once_and_the_server_waits(tmp_path):
    async with serving(tmp_path) as (client, directory):
        (directory / "request.json").mkdir()  # nobody can read that
        with trio.fail_after(5):
            while not client.status().startswith("error:"):
                await trio.sleep(0.01)
        assert "cannot read request.json" in client.status()
        (directory / "request.json").rmdir()
        assert await call(client.fetch_response, "hello after") == "Hello After"


async def test_oversized_request_is_refused(tmp_path):
    server = DemoServer(root=tmp_path, max_request_bytes=100)
    async with serving(tmp_path, server) as (client, _):
        with pytest.raises(SessionError, match="limit"):
            await call(client.fetch_response, {"cmd": "hello", "params": "x" * 200}, 3)
        assert await call(client.fetch_response, "hello ok") == "Hello Ok"


async def test_response_waits_until_the_previous_one_is_taken(tmp_path):
    async with serving(tmp_path) as (client, directory):
        response = directory / "response.json"
        await call(client.send_request, {"cmd": "twice"})
        with trio.fail_after(5):
            while not response.exists():
                await trio.sleep(0.001)
        assert json.loads(response.read_bytes())["params"] == "first"
        assert not (directory / "request.json").exists()  # consumed when the first answer went out
        await trio.sleep(0.1)
        assert json.loads(response.read_bytes())["params"] == "first"  # not overwritten
        response.unlink()
        assert await call(client.wait_for_response, 3) == "second"


@pytest.mark.parametrize("how", ["command", "status", "flag", "plain"])
async def test_exit(tmp_path, how):
    server = DemoServer(root=tmp_path)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            directory = await nursery.start(server.serve, "x")
            client = PythonSession(session_id="x", root=tmp_path)
            if how == "command":
                await call(client.send_request, {"cmd": "exit"})
            elif how == "plain":
                await call(client.send_request, "exit")
            elif how == "status":
                (directory / "status.txt").write_text("exit")
            else:
                (directory / "exit.flag").touch()
    assert (directory / "status.txt").read_text() == "terminated"
    assert not (directory / "request.json").exists()


async def test_exit_while_a_response_waits_for_the_client(tmp_path):
    server = DemoServer(root=tmp_path)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            directory = await nursery.start(server.serve, "x")
            (directory / "response.json").write_text('{"cmd": "", "params": "never read"}')
            PythonSession(session_id="x", root=tmp_path).send_request({"cmd": "hello", "params": "blocked"})
            await trio.sleep(0.1)  # the server is now waiting for response.json to go
            (directory / "exit.flag").touch()
    assert (directory / "status.txt").read_text() == "terminated"


async def test_server_exits_when_the_session_directory_goes(tmp_path):
    import shutil

    server = DemoServer(root=tmp_path)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            directory = await nursery.start(server.serve, "gone")
            await trio.sleep(0.05)
            shutil.rmtree(directory)  # what the C++ destructor does
    assert not directory.exists()


async def test_polling_fallback(tmp_path):
    server = DemoServer(root=tmp_path, use_inotify=False)
    async with serving(tmp_path, server) as (client, _):
        assert await call(client.fetch_response, "hello poll") == "Hello Poll"
        r = await call(client.calculate, "matmul", np.eye(3, dtype=np.float32), np.ones((3, 2), np.float32))
        assert np.array_equal(r, np.ones((3, 2), np.float32))


async def test_a_second_server_for_the_same_session_is_refused(tmp_path):
    async with serving(tmp_path, sid="dup") as (client, _):
        with pytest.raises(SessionBusyError):
            await DemoServer(root=tmp_path).serve("dup")
        env = dict(os.environ, **{ENV_ROOT: str(tmp_path)})
        proc = await trio.run_process([sys.executable, str(DEFAULT_SCRIPT), "dup"], env=env, check=False)
        assert proc.returncode == 3
        assert await call(client.fetch_response, "hello still") == "Hello Still"


def test_subclass_api_outside_a_request_is_an_error():
    server = TechRenaissanceServer()
    with pytest.raises(RuntimeError, match="main_logic"):
        server.write_response("", "x")
    with pytest.raises(RuntimeError, match="main_logic"):
        server.get_tensors("a", 1)


def test_client_launches_the_shipped_script(tmp_path):
    with PythonSession("default", "proc", root=tmp_path, poll_interval=0.0005) as session:
        session.start()
        assert session.fetch_response("hello process") == "Hello Process"
        a = np.arange(6, dtype=np.float32).reshape(2, 3)
        assert np.array_equal(session.calculate("add", a, a), a * 2)
        assert session.is_alive() and session.is_ready() and not session.is_busy()
        session.please_exit(5)
        assert session.process.returncode == 0
    assert session.status() == "terminated"


def test_console_entry_point_and_terminate(tmp_path):
    entry = Path(sys.executable).with_name("switchyard-tensor-session")  # the [project.scripts] entry
    command = [str(entry)] if entry.exists() else [sys.executable, "-m", "switchyard.services.tensor.cli"]
    proc = subprocess.Popen([*command, "ep", "--root", str(tmp_path)])
    try:
        session = PythonSession(session_id="ep", root=tmp_path)
        assert session.fetch_response("hello entry", timeout=10) == "Hello Entry"
        session.process = proc
        session.terminate(timeout=5)  # status.txt "exit"
        assert proc.returncode == 0
        assert session.status() == "terminated"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_session_root_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_ROOT, raising=False)
    assert resolve_session_root(tmp_path / "x") == tmp_path / "x"
    script = tmp_path / "proj" / "python" / "module" / "python_server.py"
    assert resolve_session_root(script=str(script)) == tmp_path / "proj" / "workspace" / "python_session"
    monkeypatch.chdir(tmp_path)
    assert resolve_session_root(script=str(tmp_path / "elsewhere.py")) == tmp_path / "workspace" / "python_session"
    monkeypatch.setenv(ENV_ROOT, str(tmp_path / "env"))
    assert resolve_session_root(script=str(script)) == tmp_path / "env"


def test_tensor_input_written_by_a_cpp_style_writer_in_place(tmp_path):
    """The C++ exporter writes <tag>.tsr in place (no rename); the server must not care."""
    with PythonSession("default", "inplace", root=tmp_path, poll_interval=0.0005) as session:
        session.start()
        a = np.full((3, 3), 2, np.float32)
        from switchyard.services.tensor.tsr import encode

        for tag in ("a", "b"):
            (session.dir / f"{tag}.tsr").write_bytes(encode(a))
        r = session.fetch_tensor({"cmd": "matmul", "params": "a,b"})
        assert np.all(r == 12)
        t0 = time.monotonic()
        session.please_exit(5)
        assert time.monotonic() - t0 < 5
