"""The ``switchyard`` command: ``run``, ``check`` and ``kinds``.

Exit status: 0 after an orderly stop (SIGINT/SIGTERM), 2 for a bad manifest or bad
arguments (one readable line on stderr), 1 when the app fails (an actor cannot
start, or the root supervisor gives up).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

import trio

from switchyard.runtime.errors import ConfigError, SupervisorEscalation, single_cause
from switchyard.runtime.kinds import known_kinds, resolve_kind, summary
from switchyard.runtime.logs import configure_logging
from switchyard.runtime.manifest import AppSpec, default_manifest_path, load_manifest, open_app, start_app

log = logging.getLogger("switchyard.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchyard", description="Run switchyard actor apps.")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log level (default INFO)",
    )
    parser.add_argument("--log-format", default="text", choices=["text", "json"], help="log format (default text)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run an app manifest (default: the built-in default app)")
    run.add_argument("manifest", nargs="?", help="path to an app manifest (TOML)")
    run.add_argument(
        "--grace-period",
        type=float,
        default=None,
        help="seconds in-flight work gets on shutdown (default: the manifest's)",
    )
    check = commands.add_parser("check", help="validate a manifest; start nothing")
    check.add_argument("manifest", help="path to an app manifest (TOML)")
    commands.add_parser("kinds", help="list the registered actor kinds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Until Trio takes over signal handling, SIGTERM (like SIGINT) means "stop now":
    # a signal during start-up is an orderly stop request too, and exits 0.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return 0


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    if args.command == "kinds":
        return _kinds()
    path = args.manifest if args.manifest else default_manifest_path()
    try:
        app = load_manifest(path)
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
        exc = single_cause(raised)
        if isinstance(exc, KeyboardInterrupt):
            return 0
        if isinstance(exc, SupervisorEscalation | ConfigError | OSError):
            log.error("%s", exc)
            print(f"switchyard: {exc}", file=sys.stderr)
            return 1
        raise
    return 0


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
                log.info("app %r ready: %s", app.name, ", ".join(system.names()) or "(no actors)")
                await stop.wait()
            nursery.cancel_scope.cancel()
    log.info("app %r stopped", app.name)


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
