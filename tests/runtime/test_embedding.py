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


def test_public_api_and_every_runtime_module_declares_all() -> None:
    import importlib
    import pkgutil

    import switchyard
    import switchyard.runtime

    for name in ("Crash", "ActorNotFound", "Supervisor", "Strategy", "Restart", "RestartPolicy", "open_system"):
        assert name in switchyard.__all__ and getattr(switchyard, name) is getattr(switchyard.runtime, name)
    for module in pkgutil.iter_modules(switchyard.runtime.__path__):
        if module.name.startswith("_"):
            continue
        loaded = importlib.import_module(f"switchyard.runtime.{module.name}")
        assert hasattr(loaded, "__all__"), module.name
        for exported in loaded.__all__:
            assert hasattr(loaded, exported), (module.name, exported)
