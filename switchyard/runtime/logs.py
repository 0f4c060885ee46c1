"""Logging set-up for the CLI: text or one JSON object per line.

Loggers: ``switchyard.actor.<name>`` per actor, ``switchyard.supervisor.<name>``
per supervisor, ``switchyard.system`` and ``switchyard.cli``.

Defaults come from the environment: ``SWITCHYARD_LOG_LEVEL`` (else ``LOG_LEVEL``,
else ``INFO``) and ``SWITCHYARD_LOG_FORMAT`` (``text`` or ``json``). A log file
rotates at ``LOG_FILE_MAX_BYTES`` (10 MiB) keeping ``LOG_FILE_BACKUPS`` (5) old files.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Mapping

__all__ = [
    "LEVELS",
    "LOG_FILE_BACKUPS",
    "LOG_FILE_MAX_BYTES",
    "TEXT_FORMAT",
    "JsonFormatter",
    "configure_logging",
    "env_log_format",
    "env_log_level",
]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FILE_MAX_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (ISO 8601 UTC), level, logger, message, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def env_log_level(environ: Mapping[str, str] = os.environ) -> str:
    """``SWITCHYARD_LOG_LEVEL``, else ``LOG_LEVEL``, else ``INFO`` (upper-cased)."""
    return (environ.get("SWITCHYARD_LOG_LEVEL") or environ.get("LOG_LEVEL") or "INFO").upper()


def env_log_format(environ: Mapping[str, str] = os.environ) -> str:
    """``SWITCHYARD_LOG_FORMAT`` (``text`` or ``json``), else ``text``."""
    return (environ.get("SWITCHYARD_LOG_FORMAT") or "text").lower()


def configure_logging(
    level: str = "INFO",
    fmt: str = "text",
    *,
    log_file: str | None = None,
    max_bytes: int = LOG_FILE_MAX_BYTES,
    backups: int = LOG_FILE_BACKUPS,
) -> None:
    """Send switchyard's (and everything else's) logs to stderr at ``level``.

    With ``log_file`` they go to that file instead, rotated at ``max_bytes`` with
    ``backups`` old files kept (``PATH.1`` ... ``PATH.N``).
    """
    handler: logging.Handler
    if log_file:
        handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
