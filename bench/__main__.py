"""Run every benchmark in one go and write bench/RESULTS.md.

``make bench`` (or ``python -m bench``) runs each ``bench/bench_*.py`` module in its
own process, one after the other (the machine has 2 cores: running them side by side
would measure contention), prints each section as it arrives, and writes them all,
with the machine and the command, to ``bench/RESULTS.md``.
``python -m bench core aipara`` runs only the named modules.

Each module runs twice: quietly, then on a loaded host (a bounded CPU burner on one
core, :func:`bench._load.cpu_burner`, with ``SWITCHYARD_BENCH_LOADED=1`` in the
module's environment). A closing section lists, for every same-run ratio cell
(``1.23x``) found at the same row and column of both outputs, loaded / quiet; a
ratio must keep at least 80% of its quiet value. ``--quiet-only`` skips the loaded
pass.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from bench._load import ENV_LOADED, cpu_burner
from bench._stats import table

HERE = Path(__file__).resolve().parent
MODULE_TIMEOUT = 900
#: A ratio may fall to this fraction of its quiet value on the loaded host.
KEEP = 0.8
_RATIO = re.compile(r"^(\d+(?:\.\d+)?)x$")


def _run(module: str, loaded: bool) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop(ENV_LOADED, None)
    command = [sys.executable, "-m", f"bench.{module}"]
    if not loaded:
        return subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent, timeout=MODULE_TIMEOUT)
    env[ENV_LOADED] = "1"
    with cpu_burner(seconds=MODULE_TIMEOUT):
        return subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent, timeout=MODULE_TIMEOUT, env=env)


def ratio_cells(markdown: str) -> dict[tuple[str, str, int], float]:
    """``(section, row label, column) -> ratio`` for every ``N.NNx`` table cell."""
    cells: dict[tuple[str, str, int], float] = {}
    title = ""
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip()
            continue
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        row = [cell.strip() for cell in line.strip().strip("|").split("|")]
        for col, cell in enumerate(row[1:], start=1):
            m = _RATIO.match(cell)
            if m:
                cells[(title, row[0], col)] = float(m.group(1))
    return cells


#: Rows whose ratio is a parallel speed-up (two processes against one): with one of the
#: two cores taken by the burner there is no second core to scale onto, whatever the
#: code does, so they are shown but not counted against the rule.
SCALING_ROWS = re.compile(r"^2 worker processes")


def stability(quiet: str, loaded: str) -> tuple[str, int]:
    """The loaded-vs-quiet table over all ratio cells, and how many fell below KEEP
    (parallel speed-up rows, :data:`SCALING_ROWS`, are listed but not counted)."""
    q, ld = ratio_cells(quiet), ratio_cells(loaded)
    rows, bad = [], 0
    for key in q:
        if key not in ld or not q[key]:
            continue
        kept = ld[key] / q[key]
        ok = kept >= KEEP
        scaling = bool(SCALING_ROWS.match(key[1]))
        bad += not ok and not scaling
        verdict = "ok" if ok else ("fell (parallel speed-up: needs the busy core)" if scaling else "FELL")
        rows.append([key[0], key[1], key[2], f"{q[key]:.2f}x", f"{ld[key]:.2f}x", f"{kept:.0%}", verdict])
    header = ["section", "row", "col", "quiet", "loaded", "kept", f">= {KEEP:.0%}"]
    return table(header, rows), bad


def main(argv: list[str]) -> int:
    quiet_only = "--quiet-only" in argv
    argv = [a for a in argv if a != "--quiet-only"]
    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))
    wanted = [f"bench_{name}" for name in argv] if argv else modules
    unknown = [m for m in wanted if m not in modules]
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(m[6:] for m in modules)}", file=sys.stderr
        )
        return 2
    sections = []
    failed = []
    outputs: dict[bool, list[str]] = {False: [], True: []}
    for module in wanted:
        for loaded in (False,) if quiet_only else (False, True):
            label = f"{module} (loaded: one core busy)" if loaded else module
            print(f"== {label} ==", file=sys.stderr, flush=True)
            started = time.monotonic()
            result = _run(module, loaded)
            took = time.monotonic() - started
            if result.returncode != 0:
                failed.append(label)
                sections.append(
                    f"### {label}\n\nFAILED (exit {result.returncode}):\n\n```\n{result.stderr[-3000:]}\n```\n"
                )
            else:
                out = result.stdout.strip()
                outputs[loaded].append(out)
                if loaded:
                    out = re.sub(r"^(#+ .*)$", r"\1 (loaded)", out, flags=re.M)
                sections.append(out + f"\n\n_(took {took:.0f} s)_\n")
            print(sections[-1], flush=True)
    if not quiet_only:
        body, bad = stability("\n".join(outputs[False]), "\n".join(outputs[True]))
        sections.append(
            "### Loaded vs quiet\n\nEvery same-run ratio, quiet and with a CPU burner on one core "
            f"(`bench._load.cpu_burner`); a ratio must keep {KEEP:.0%} of its quiet value. "
            f"{bad} fell below (not counting parallel speed-ups of two worker processes, which a "
            f"busy core takes away by definition).\n\n{body}\n"
        )
        print(sections[-1], flush=True)
    header = [
        "# Benchmark results",
        "",
        f"Produced by `make bench` (`python -m bench {' '.join(argv)}`".rstrip() + ") on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, {os.cpu_count()} cores "
        f"(shared, noisy), Python {platform.python_version()}. Every figure is a median over several runs, "
        "with ratios against a baseline measured in the same run.",
        "",
    ]
    if not argv:
        (HERE / "RESULTS.md").write_text("\n".join(header) + "\n" + "\n".join(sections), encoding="utf-8")
        print("wrote bench/RESULTS.md", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
