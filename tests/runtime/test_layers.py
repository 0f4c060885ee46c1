"""The import contract between the layers, read from the source with ``ast``.

services -> transports -> protocols -> runtime: a module may import its own layer
and the layers below it, never one above; services never import each other;
protocols import nothing above them; runtime knows no concrete actor or app.
``actors`` (generic actors such as echo and the IPC bridge) and ``remote`` sit at
the services' level; ``testing`` and ``apps`` may use everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "switchyard"

# Lower rank = lower layer.
RANK = {"runtime": 0, "protocols": 1, "transports": 2, "services": 3, "actors": 3, "remote": 3}
TOP = {"testing", "apps"}


def _layer_of(module: str) -> tuple[str, str | None]:
    """(layer, service) of a dotted ``switchyard...`` module name."""
    parts = module.split(".")
    if len(parts) < 2:
        return "root", None
    layer = parts[1]
    service = parts[2] if layer == "services" and len(parts) > 2 else None
    return layer, service


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.count(".") >= 2 or node.module == "switchyard":
                found.append((node.lineno, node.module))
            else:  # "from switchyard.services import aipara": the names are the modules
                found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("switchyard.")]


def _module_name(path: Path, package: Path) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _violations(package: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        source = _module_name(path, package)
        src_layer, src_service = _layer_of(source)
        if src_layer in TOP or src_layer == "root":
            continue
        for line, target in _imports(path):
            dst_layer, dst_service = _layer_of(target)
            where = f"{path.relative_to(package.parent)}:{line} imports {target}"
            if dst_layer in TOP:
                problems.append(f"{where}: nothing below apps/testing may import them")
            elif dst_layer == "root":
                continue  # the package itself (version, re-exports)
            elif dst_layer not in RANK:
                continue  # a module attribute picked up by the from-import walk
            elif RANK[dst_layer] > RANK[src_layer]:
                problems.append(f"{where}: {src_layer} may not import {dst_layer}")
            elif src_layer == "services" and dst_layer == "services" and dst_service != src_service:
                problems.append(f"{where}: services never import each other")
            elif src_layer in {"actors", "remote"} and dst_layer == "services":
                problems.append(f"{where}: generic actors do not import a service")
    return problems


def test_every_import_points_down_the_layers() -> None:
    assert _violations() == []


@pytest.mark.parametrize(
    ("module", "source", "complaint"),
    [
        ("protocols/codec.py", "from switchyard.transports import zmq\n", "protocols may not import transports"),
        ("runtime/x.py", "import switchyard.services.aipara\n", "runtime may not import services"),
        (
            "services/robot/w.py",
            "from switchyard.services.aipara import protocol\n",
            "services never import each other",
        ),
        ("transports/t.py", "from switchyard.testing import ports\n", "nothing below apps/testing"),
        ("actors/a.py", "from switchyard.services.tensor import tsr\n", "generic actors do not import a service"),
    ],
)
def test_the_contract_catches_each_kind_of_violation(tmp_path: Path, module: str, source: str, complaint: str) -> None:
    package = tmp_path / "switchyard"
    target = package / module
    target.parent.mkdir(parents=True)
    target.write_text(source)
    (package / "services" / "aipara").mkdir(parents=True, exist_ok=True)
    (package / "services" / "aipara" / "ok.py").write_text("from switchyard.services.aipara import protocol\n")
    problems = _violations(package)
    assert len(problems) == 1 and complaint in problems[0], problems


@pytest.mark.parametrize("service", ["aipara", "inference", "tensor", "robot"])
def test_each_service_re_exports_its_user_api(service: str) -> None:
    import importlib

    package = importlib.import_module(f"switchyard.services.{service}")
    assert package.__all__, service
    for name in package.__all__:
        assert getattr(package, name) is not None


def test_runtime_names_no_concrete_actor_module() -> None:
    for path in (PACKAGE / "runtime").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "switchyard.services" not in text, path
