"""``switchyard-tensor-session``: the command the C++ client's launch ends up running."""

from __future__ import annotations

import argparse
import logging
import sys

from switchyard.services.tensor.file_session import ENV_ROOT, resolve_session_root
from switchyard.services.tensor.server import load_server_class

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``switchyard-tensor-session <session_id> [--root DIR] [--server mod:Class]``.

    What the C++ client's ``python3 <script> <session_id>`` launch ends up calling.
    Exit codes: 0 served and exited, 3 another server holds the session.
    """
    parser = argparse.ArgumentParser(
        prog="switchyard-tensor-session",
        description="Serve a Tech Renaissance PythonSession directory (tr_session_<id>).",
    )
    parser.add_argument("session_id")
    parser.add_argument(
        "--root",
        help=f"directory holding tr_session_<id> (default: ${ENV_ROOT}, "
        "else <project>/workspace/python_session for a script in <project>/python/module/, "
        "else ./workspace/python_session)",
    )
    parser.add_argument("--server", help="module:Class of a TensorSessionServer subclass to run")
    parser.add_argument("--poll", action="store_true", help="poll instead of using inotify")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        cls = load_server_class(args.server or "")
    except (ImportError, ValueError) as exc:
        parser.error(f"--server: {exc}")
    server = cls(debug=args.debug, root=resolve_session_root(args.root), use_inotify=not args.poll)
    return server.run(args.session_id)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
