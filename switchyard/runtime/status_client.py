"""``switchyard status``: read a running app's ``/health`` and print one row per actor.

Exit status 0 when the app answers and every actor runs, 1 (one line on stderr)
when nothing answers or an actor is not running.
"""

from __future__ import annotations

import json
import sys
import time
import tomllib
import urllib.error
import urllib.request
from typing import Any

__all__ = ["default_status_url", "fetch_health", "format_table", "show_status"]


def default_status_url() -> str:
    """The default app's status URL, from ``[app] status`` of the shipped default manifest."""
    from switchyard.runtime.manifest import DEFAULT_STATUS, default_manifest_path

    app = tomllib.loads(default_manifest_path().read_text(encoding="utf-8")).get("app", {})
    value = app.get("status", DEFAULT_STATUS)
    if isinstance(value, dict):
        value = f"{value.get('host', '127.0.0.1')}:{value.get('port', 8090)}"
    return _normalise(str(value))


def _normalise(url: str) -> str:
    if "://" not in url:
        url = f"http://{url}"
    return url.rstrip("/") + "/"


def fetch_health(url: str, timeout: float = 3.0) -> dict[str, Any]:
    """The ``/health`` document at status URL ``url``; raises ``OSError`` when nothing answers."""
    with urllib.request.urlopen(_normalise(url) + "health", timeout=timeout) as response:
        document: dict[str, Any] = json.loads(response.read())
    return document


def format_table(health: dict[str, Any]) -> str:
    """One header line, then one row per actor."""
    rows = [("ACTOR", "STATE", "MAILBOX", "HANDLED", "ERRORS", "RESTARTS", "LAST ERROR")]
    for name, actor in health.get("actors", {}).items():
        rows.append(
            (
                name,
                str(actor["state"]),
                f"{actor['mailbox_depth']}/{actor['mailbox_capacity']}",
                str(actor["handled"]),
                str(actor["errors"]),
                str(actor["restarts"]),
                (actor.get("last_error") or "")[:60],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"app {health.get('app')!r}, up {health.get('uptime', 0):.0f} s"]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def show_status(url: str | None, *, as_json: bool = False, watch: bool = False, timeout: float = 3.0) -> int:
    """Print the status of the app at ``url`` (default: the default app's); see the module docstring."""
    target = _normalise(url) if url else default_status_url()
    while True:
        try:
            health = fetch_health(target, timeout)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            print(f"switchyard: no app answers at {target}: {reason}", file=sys.stderr)
            return 1
        text = json.dumps(health, indent=2, ensure_ascii=False) if as_json else format_table(health)
        if watch:
            sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
            sys.stdout.flush()
            time.sleep(1.0)
            continue
        print(text)
        return 0 if health.get("ok") else 1
