"""Docs that run: every fenced python block in README.md and docs/*.md runs, every TOML block checks.

A block that is deliberately incomplete is marked with ``<!-- fragment -->`` on the
line before its fence; those are skipped, and they must stay a minority. A TOML
block of ``[[actor]]`` tables without ``[app]`` is checked inside a minimal app.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FRAGMENT = "<!-- fragment -->"
CLI = [sys.executable, "-m", "switchyard.runtime.cli"]


@attrs.frozen
class Block:
    path: Path
    line: int
    language: str
    code: str
    fragment: bool

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def extract(path: Path) -> list[Block]:
    """The fenced blocks of ``path`` (```lang ... ```), with their start line."""
    blocks = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^```(\w+)\s*$", lines[i])
        if match is None:
            i += 1
            continue
        start = i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        previous = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        blocks.append(
            Block(
                path, start + 1, match.group(1).lower(), "\n".join(lines[start + 1 : end]) + "\n", previous == FRAGMENT
            )
        )
        i = end + 1
    return blocks


ALL = [block for path in DOCS for block in extract(path)]
CHECKED = [b for b in ALL if b.language in ("python", "toml")]


def test_fragments_are_a_minority() -> None:
    fragments = [b.id for b in CHECKED if b.fragment]
    assert len(fragments) * 2 <= len(CHECKED), fragments


def test_readme_starts_with_make_run_and_make_test() -> None:
    first = extract(ROOT / "README.md")[0]
    commands = [line.split("#")[0].strip() for line in first.code.splitlines() if line.strip()]
    assert commands == ["make run", "make test"]


def test_readme_links_stay_inside_the_repository() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert "://" not in target and not target.startswith("/"), target
        assert (ROOT / target.split("#")[0]).exists(), target
    assert "../" not in text


@pytest.mark.parametrize("block", [b for b in CHECKED if b.language == "python"], ids=lambda b: b.id)
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    if block.fragment:
        pytest.skip("marked as a fragment")
    script = tmp_path / "block.py"
    script.write_text(block.code, encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, f"{block.id} failed:\n{result.stdout[-1500:]}\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("block", [b for b in CHECKED if b.language == "toml"], ids=lambda b: b.id)
def test_toml_block_checks(block: Block, tmp_path: Path) -> None:
    if block.fragment:
        pytest.skip("marked as a fragment")
    code = block.code
    if "[app]" not in code and "[[actor]]" in code:
        # an [[actor]] excerpt: checked inside the smallest app around it
        code = '[app]\nname = "docs"\nstatus = false\n' + code
    manifest = tmp_path / "block.toml"
    manifest.write_text(code, encoding="utf-8")
    result = subprocess.run([*CLI, "check", str(manifest)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, f"{block.id}: {result.stderr.strip()}"
