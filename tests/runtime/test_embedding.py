"""The README's embedding example, run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_embedding_example_runs(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- embedding-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md must hold the embedding example after <!-- embedding-example -->"
    script = tmp_path / "embed.py"
    script.write_text(match.group(1))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "asked: HELLO" in result.stdout
    assert "streamed: [0, 1, 2]" in result.stdout
    assert "stats: handled=2" in result.stdout
