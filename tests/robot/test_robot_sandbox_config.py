"""Sandbox modes and settings: refusals, the one warning, the environment allowlist, the command."""

# The fixtures shared with test_robot_sandbox are imported; pytest injects them by name.
# ruff: noqa: F811

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_robot_sandbox import (  # noqa: F401 (fixtures)
    BWRAP,
    IN_CI,
    ROOT,
    Mode,
    _refused,
    hostile_worker,
    mode_no_bwrap,
    reachable_python,
)

from switchyard.services.robot import sandbox as sb
from switchyard.services.robot.worker import RobotWorkerConfig

names = st.text(st.characters(min_codepoint=65, max_codepoint=90), min_size=1, max_size=8)
values = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=16)


@settings(max_examples=200, deadline=None)
@given(
    server=st.dictionaries(names, values, max_size=12),
    passed=st.lists(names, max_size=3),
    extra=st.dictionaries(names, values, max_size=3),
)
def test_clean_env_holds_only_the_allowlist(server: dict[str, str], passed: list[str], extra: dict[str, str]) -> None:
    env = sb.clean_env(
        server, sb.SandboxSettings(env=extra, pass_env=tuple(passed)), home="/tmp", python_bin="/opt/py/bin"
    )
    fixed = {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
    assert set(env) <= fixed | set(passed) | set(extra)
    for name, value in env.items():
        if name in extra:
            assert value == extra[name]
        elif name in passed and name in server:
            assert value == server[name]
        else:
            assert name in fixed


def test_limits_become_rlimits() -> None:
    limits = sb.Limits(memory_bytes=100, processes=5, open_files=7, file_bytes=9, cpu_seconds=0)
    assert limits.rlimits(existing_tasks=10) == {"AS": 100, "NPROC": 15, "NOFILE": 7, "FSIZE": 9}
    assert sb.Limits(processes=0, memory_bytes=0).rlimits(3).keys() == {"NOFILE", "FSIZE"}


def test_manifest_keys_reach_the_settings() -> None:
    cfg = RobotWorkerConfig(network=False, max_memory_bytes=1 << 30, groups=("dialout",), devices=("/dev/ttyUSB0",))
    box = cfg.sandbox_settings()
    assert box.network is False and box.limits.memory_bytes == 1 << 30
    assert box.groups == ("dialout",) and box.devices == ("/dev/ttyUSB0",)
    assert RobotWorkerConfig().sandbox_settings().limits == sb.Limits()


def _box(tmp_path: Path, **kwargs: object) -> sb.Sandbox:
    settings_ = sb.SandboxSettings(**kwargs)  # type: ignore[arg-type]
    return sb.Sandbox(
        settings_,
        bwrap="/usr/bin/bwrap",
        identity=sb.Identity(65534, 65534, (20,), "nobody"),
        interpreter=sb._Interpreter("/opt/py/bin/python", ("/opt/py",)),
        child_script="/src/child.py",
        hidden=(str(tmp_path / "storage"),),
        server_env={"SECRET": "x"},
        warning=None,
    )


def test_bubblewrap_command(tmp_path: Path) -> None:
    launch = _box(tmp_path, network=False, ro_paths=("/opt/ros",), devices=("/dev/ttyUSB0",)).launch(
        project=tmp_path / "p", ipc_dir="/tmp/ipc", cmd_name="cmd-1.sock", pub_name="cb.sock", rlimits={}, lifeline=9
    )
    argv = launch.argv
    assert argv[3:6] == [sb.LAUNCHER_SCRIPT, "9", "/usr/bin/bwrap"]
    for flag in ("--unshare-pid", "--unshare-net", "--die-with-parent", "--new-session"):
        assert flag in argv
    assert ["--bind", str(tmp_path / "p"), "/project"] == argv[argv.index("--bind") : argv.index("--bind") + 3]
    assert ["--ro-bind", "/opt/py", "/opt/py"] == argv[argv.index("/opt/py") - 1 : argv.index("/opt/py") + 2]
    assert "--dev-bind-try" in argv and "/opt/ros" in argv
    at = argv.index("setpriv")
    assert argv[at : at + 6] == ["setpriv", "--reuid=65534", "--regid=65534", "--groups=20", "--no-new-privs", "--"]
    assert argv[-4:-1] == ["ipc:///run/switchyard/ipc/cmd-1.sock", "ipc:///run/switchyard/ipc/cb.sock", "/project"]
    assert "SECRET" not in launch.env and launch.options == {"pass_fds": (9,)}
    networked = _box(tmp_path).launch(
        project=tmp_path / "p", ipc_dir="/tmp/ipc", cmd_name="c", pub_name="p", rlimits={}, lifeline=9
    )
    assert "--unshare-net" not in networked.argv


@pytest.mark.skipif(BWRAP is None and not IN_CI, reason="bubblewrap is not installed")
async def test_required_without_bubblewrap_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # bwrap cannot be found
    mode = Mode("bwrap", {"sandbox": "required"}, tmp_path / "storage")
    line = await _refused(mode, "sandbox = 'required' but bubblewrap (bwrap) is not installed")
    assert "apt install bubblewrap" in line


async def test_auto_without_bubblewrap_warns_once(
    mode_no_bwrap: Mode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # bwrap cannot be found
    caplog.set_level(logging.WARNING)
    auto = Mode("auto", {**mode_no_bwrap.config, "sandbox": "auto"}, mode_no_bwrap.storage)
    async with hostile_worker(auto) as call:
        assert (await call("whoami"))["status"] == "success"
    lines = [r.getMessage() for r in caplog.records if "filesystem confinement is OFF" in r.getMessage()]
    assert len(lines) == 1 and "bubblewrap (bwrap) is not installed" in lines[0]


async def test_off_warns_once(mode_no_bwrap: Mode, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with hostile_worker(mode_no_bwrap) as call:
        assert (await call("whoami"))["status"] == "success"
        assert (await call("whoami"))["status"] == "success"
    lines = [r.getMessage() for r in caplog.records if "filesystem confinement is OFF" in r.getMessage()]
    assert len(lines) == 1 and "sandbox = 'off'" in lines[0], lines


@pytest.mark.skipif(not ROOT, reason="a uid drop needs a root server")
async def test_unreachable_interpreter_refuses_in_one_line(tmp_path: Path, mode_no_bwrap: Mode) -> None:
    probe = sb._reachable(sys.executable, sb.Identity(65534, 65534), want=0o100)
    if probe is None:
        pytest.skip("this interpreter is reachable by uid 65534")
    mode = Mode("no-bwrap", {"sandbox": "off"}, mode_no_bwrap.storage)
    line = await _refused(mode, "without bubblewrap user code runs as uid 65534, which cannot reach")
    assert "install bubblewrap" in line
