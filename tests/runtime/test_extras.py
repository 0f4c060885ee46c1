"""A core-only install (no extras): the runtime imports, and a kind whose extra is missing is one line.

Builds a real venv with ``python -m venv``, installs switchyard with ``--no-deps``
and only the core dependencies (pip's cache makes this offline-friendly).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    result = subprocess.run([*pip, *core], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot install the core dependencies: {result.stderr[-500:]}")
        pytest.skip(f"cannot install the core dependencies (offline?): {result.stderr.strip()[-200:]}")
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True, capture_output=True, timeout=300)
    return venv


def test_runtime_imports_without_any_extra(core_venv: Path) -> None:
    probe = (
        "import sys, switchyard, switchyard.runtime, switchyard.testing.ports\n"
        "heavy = [m for m in ('numpy', 'onnxruntime', 'httpx', 'pinyin2hanzi', 'hypothesis') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([str(core_venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("command", "line"),
    [
        (
            ["check", "inference"],
            "actor 'inference': actor kind 'inference' needs the 'inference' extra (numpy is not installed): "
            "pip install 'switchyard[inference]'",
        ),
        (
            ["run", "inference"],
            "actor 'inference': actor kind 'inference' needs the 'inference' extra (numpy is not installed): "
            "pip install 'switchyard[inference]'",
        ),
        (["check", "aipara"], "needs the 'aipara' extra"),
    ],
)
def test_missing_extra_is_one_line(core_venv: Path, tmp_path: Path, command: list[str], line: str) -> None:
    result = subprocess.run(
        [str(core_venv / "bin" / "switchyard"), *command], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and line in lines[0], result.stderr
    assert "Traceback" not in result.stderr
