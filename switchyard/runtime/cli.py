"""The ``switchyard`` command: ``run``, ``check``, ``apps``, ``kinds`` and ``--version``.

A manifest argument is a path or the name of a shipped app (``switchyard apps``);
without one the default app runs. Exit status: 0 after an orderly stop
(SIGINT/SIGTERM), 2 for a bad manifest or bad arguments (one readable line on
stderr), 1 when the app fails (an actor cannot start, or the root supervisor gives
up; one line naming the actor and the cause, a traceback only with
``--log-level DEBUG``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from switchyard.runtime.errors import ConfigError, describe_start_failure, single_cause
from switchyard.runtime.kinds import known_kinds, resolve_kind, summary
from switchyard.runtime.logs import LEVELS, configure_logging, env_log_format, env_log_level
from switchyard.runtime.manifest import (
    AppSpec,
    actor_addresses,
    default_manifest_path,
    load_manifest,
    open_app,
    shipped_apps,
    start_app,
)

__all__ = ["build_parser", "main", "resolve_manifest", "run_until_signalled"]

log = logging.getLogger("switchyard.cli")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("switchyard")
    except PackageNotFoundError:
        import switchyard

        return switchyard.__version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchyard", description="Run switchyard actor apps.")
    parser.add_argument("--version", action="version", version=f"switchyard {_version()}")
    level = env_log_level()
    parser.add_argument(
        "--log-level",
        default=level if level in LEVELS else "INFO",
        choices=list(LEVELS),
        type=str.upper,
        help="log level (default: $SWITCHYARD_LOG_LEVEL, else $LOG_LEVEL, else INFO)",
    )
    fmt = env_log_format()
    parser.add_argument(
        "--log-format",
        default=fmt if fmt in ("text", "json") else "text",
        choices=["text", "json"],
        help="log format (default: $SWITCHYARD_LOG_FORMAT, else text)",
    )
    parser.add_argument(
        "--log-file",
        default=None,
        metavar="PATH",
        help="write logs to PATH instead of stderr, rotated at 10 MiB keeping 5 old files",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run an app manifest (default: the built-in default app)")
    run.add_argument("manifest", nargs="?", help="path to an app manifest (TOML) or a shipped app's name")
    run.add_argument(
        "--grace-period",
        type=float,
        default=None,
        help="seconds in-flight work gets on shutdown (default: the manifest's)",
    )
    check = commands.add_parser("check", help="validate a manifest; start nothing")
    check.add_argument("manifest", nargs="?", help="path or shipped app name (default: the default app)")
    commands.add_parser("kinds", help="list the registered actor kinds")
    commands.add_parser("apps", help="list the shipped app manifests")
    status = commands.add_parser("status", help="show a running app's actors (from its /health)")
    status.add_argument("url", nargs="?", help="status URL or HOST:PORT (default: the default app's)")
    status.add_argument("--json", action="store_true", help="print the /health JSON as is")
    status.add_argument("--watch", action="store_true", help="refresh every second until Ctrl-C")
    status.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the app (default 3)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Until Trio takes over signal handling, SIGTERM (like SIGINT) means "stop now":
    # a signal during start-up is an orderly stop request too, and exits 0.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # `switchyard kinds | head`: the reader left; say nothing more.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logging(args.log_level, args.log_format, log_file=args.log_file)
    except OSError as exc:
        print(f"switchyard: cannot open log file {args.log_file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if args.command == "kinds":
        return _kinds()
    if args.command == "apps":
        return _apps()
    if args.command == "status":
        from switchyard.runtime.status_client import show_status

        return show_status(args.url, as_json=args.json, watch=args.watch, timeout=args.timeout)
    try:
        app = load_manifest(resolve_manifest(args.manifest))
    except ConfigError as exc:
        print(f"switchyard: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(
            f"{app.source}: ok: app {app.name!r}, {len(app.actors)} actor(s): "
            + ", ".join(f"{a.name} ({a.kind})" for a in app.actors)
        )
        return 0
    try:
        trio.run(run_until_signalled, app, args.grace_period)
    except BaseException as raised:
        failure = single_cause(raised)
        if isinstance(failure, KeyboardInterrupt):
            return 0
        if not isinstance(failure, Exception):
            raise
        line = failure_line(failure)
        log.debug("app %r failed", app.name, exc_info=failure)
        print(f"switchyard: {line}", file=sys.stderr)
        return 1
    return 0


def failure_line(exc: BaseException) -> str:
    """One line for why the app stopped: the actor and the cause when one is known."""
    from switchyard.runtime.errors import ActorStartFailed, SupervisorEscalation

    if isinstance(exc, ActorStartFailed | SupervisorEscalation | ConfigError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return describe_start_failure("?", exc).replace("actor '?' cannot start: ", "", 1)


def resolve_manifest(name: str | None) -> Path:
    """A manifest path for ``name``: the default app for ``None``, a shipped app by name, else a path."""
    if not name:
        return default_manifest_path()
    path = Path(name)
    if path.exists() or path.suffix or "/" in name:
        return path
    apps = shipped_apps()
    if name in apps:
        return apps[name]
    raise ConfigError(f"{name}: no such file and no shipped app of that name (shipped: {', '.join(apps)})")


async def run_until_signalled(app: AppSpec, grace_period: float | None = None) -> None:
    """Start ``app``, run until SIGINT or SIGTERM, then shut down gracefully.

    A second signal during the shutdown cancels whatever is still running.
    """
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    if not stop.is_set():
                        log.info("%s received: shutting down", signal.Signals(signum).name)
                        stop.set()
                    else:
                        log.warning("second signal: cancelling at once")
                        nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            async with open_app(app, grace_period=grace_period) as system:
                await start_app(system, app)
                status_url = await system.lookup(app.status.name).ask("url") if app.status else None
                _banner(app, status_url)
                log.info("app %r ready: %s", app.name, ", ".join(system.names()) or "(no actors)")
                await stop.wait()
            nursery.cancel_scope.cancel()
    log.info("app %r stopped", app.name)


def _banner(app: AppSpec, status_url: str | None) -> None:
    width = max((len(actor.name) for actor in app.actors), default=0)
    lines = [f"switchyard: app {app.name!r} from {app.source}"]
    for actor in app.actors:
        where = ", ".join(actor_addresses(actor.config)) or "(no address)"
        lines.append(f"  {actor.name:<{width}}  {actor.kind:<16} {where}")
    if status_url:
        lines.append(f"status: {status_url} (health: {status_url}health, metrics: {status_url}metrics)")
    lines.append("stop with Ctrl-C or SIGTERM (a second signal cancels at once)")
    print("\n".join(lines), file=sys.stderr, flush=True)


def _apps() -> int:
    for name, path in shipped_apps().items():
        try:
            description = load_manifest(path).description
        except ConfigError as exc:
            description = f"(invalid: {exc})"
        print(f"{name:<22} {description}")
    return 0


def _kinds() -> int:
    width = max((len(name) for name in known_kinds()), default=0)
    for name, _target in known_kinds().items():
        try:
            line = summary(resolve_kind(name))
        except ConfigError as exc:
            line = f"(unavailable: {exc})"
        print(f"{name:<{width}}  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
