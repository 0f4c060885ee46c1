"""deploy/: the systemd unit and the Dockerfile name commands that exist and a manifest that checks."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from switchyard.runtime.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "switchyard.runtime.cli"]


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ROOT / "deploy" / "switchyard.service")
    return parser


def _switchyard_args(command: str) -> list[str]:
    words = shlex.split(command)
    assert Path(words[0]).name == "switchyard", command
    return words[1:]


def test_unit_commands_parse_and_the_manifest_checks() -> None:
    unit = _unit()
    service = unit["Service"]
    for key in ("ExecStartPre", "ExecStart"):
        args = _switchyard_args(service[key])
        build_parser().parse_args(args)  # SystemExit on an unknown option or command
    check = subprocess.run([*CLI, *_switchyard_args(service["ExecStartPre"])], capture_output=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert "switchyard status" in service["ExecStartPost"]
    assert service["KillSignal"] == "SIGTERM" and service["Restart"] == "on-failure"
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "RestrictAddressFamilies"):
        assert service.get(hardening), hardening
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(ROOT / "deploy" / "switchyard.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # The unit names /opt/switchyard/bin/switchyard, which is not installed here; nothing else may be wrong.
    problems = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and "/opt/switchyard" not in line and "switchyard.service" in line
    ]
    assert problems == [], result.stderr


def test_dockerfile_commands_exist() -> None:
    lines = (ROOT / "deploy" / "Dockerfile").read_text().splitlines()
    instructions = {line.split()[0]: line for line in lines if line and not line.startswith("#") and line[0].isupper()}
    assert instructions["FROM"].startswith("FROM python:3.1")
    assert "constraints.txt" in instructions["COPY"] or any("constraints.txt" in line for line in lines)
    import json

    entry = json.loads(instructions["ENTRYPOINT"].removeprefix("ENTRYPOINT "))
    cmd = json.loads(instructions["CMD"].removeprefix("CMD "))
    assert entry == ["switchyard"]
    build_parser().parse_args(cmd)
    health = json.loads(instructions["HEALTHCHECK"].split(" CMD ", 1)[1])
    assert health[0] == "switchyard"
    build_parser().parse_args(health[1:])
    for path in ("pyproject.toml", "constraints.txt", "README.md", "switchyard"):
        assert (ROOT / path).exists(), path
