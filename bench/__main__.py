"""Run every benchmark in one go and write bench/RESULTS.md.

``make bench`` (or ``python -m bench``) runs each ``bench/bench_*.py`` module in its
own process, one after the other (the machine has 2 cores: running them side by side
would measure contention), prints each section as it arrives, and writes them all,
with the machine and the command, to ``bench/RESULTS.md``.
``python -m bench core aipara`` runs only the named modules.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
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
    for module in wanted:
        print(f"== {module} ==", file=sys.stderr, flush=True)
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", f"bench.{module}"], capture_output=True, text=True, cwd=HERE.parent, timeout=900
        )
        took = time.monotonic() - started
        if result.returncode != 0:
            failed.append(module)
            sections.append(
                f"### {module}\n\nFAILED (exit {result.returncode}):\n\n```\n{result.stderr[-3000:]}\n```\n"
            )
        else:
            sections.append(result.stdout.strip() + f"\n\n_(took {took:.0f} s)_\n")
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
