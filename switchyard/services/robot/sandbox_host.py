"""What the host offers the robot worker's sandbox, found out once at start.

Who user code would run as (``_resolve_identity``), whether that uid can reach a path
(``_reachable``), which host directories the worker's interpreter needs
(``_discover``), whether bubblewrap works here (``_probe_bwrap``), and how many tasks a
uid already runs (:func:`count_tasks`, for ``RLIMIT_NPROC``). :func:`count_tasks` and
``_reachable`` block (meant for ``trio.to_thread``); the probes run subprocesses.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs
import trio

from switchyard.services.robot.sandbox_config import SYSTEM_PATHS, Identity, SandboxSettings, SandboxUnavailable

__all__ = ["count_tasks"]

PROBE_TIMEOUT = 20.0

_DISCOVER = (
    "import json, os, sys\n"
    "import zmq\n"
    "print(json.dumps({'prefixes': [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix],"
    " 'executable': os.path.abspath(sys.executable), 'real': os.path.realpath(sys.executable),"
    " 'zmq': os.path.dirname(os.path.dirname(os.path.abspath(zmq.__file__)))}))\n"
)


def count_tasks(uid: int) -> int:
    """Tasks (threads included) whose real uid is ``uid``: what ``RLIMIT_NPROC`` counts."""
    total = 0
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as f:
                text = f.read().decode("ascii", "replace")
        except OSError:
            continue
        real = threads = None
        for line in text.splitlines():
            if line.startswith("Uid:"):
                real = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        if real == uid:
            total += threads or 1
    return total


def _resolve_identity(settings: SandboxSettings) -> Identity | None:
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(settings.user) if not settings.user.isdigit() else pwd.getpwuid(int(settings.user))
        uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name
    except KeyError:
        if not settings.user.isdigit():
            raise SandboxUnavailable(f"robot_worker: user {settings.user!r} does not exist") from None
        uid = gid = int(settings.user)
        name = settings.user
    groups = []
    for group in settings.groups:
        try:
            groups.append(int(group) if group.isdigit() else grp.getgrnam(group).gr_gid)
        except KeyError:
            raise SandboxUnavailable(f"robot_worker: group {group!r} does not exist") from None
    return Identity(uid, gid, tuple(groups), name)


def _covered(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _reachable(path: str, ident: Identity, *, want: int) -> str | None:
    """None if ``ident`` can reach ``path`` (search on each ancestor, ``want`` on it), else why."""
    gids = {ident.gid, *ident.groups}
    for target in {Path(os.path.abspath(path)), Path(os.path.realpath(path))}:  # the link and what it names
        for current in (*reversed(target.parents), target):
            try:
                st = os.stat(current)
            except OSError as exc:
                return f"{current}: {exc.strerror}"
            if not _allowed(st, ident.uid, gids, want if current == target else stat.S_IXUSR):
                return f"{current} is mode {stat.S_IMODE(st.st_mode):04o} owned by uid {st.st_uid}"
    return None


def _allowed(st: os.stat_result, uid: int, gids: set[int], user_bits: int) -> bool:
    mode = st.st_mode
    if st.st_uid == uid:
        return bool(mode & user_bits)
    if st.st_gid in gids:
        return bool(mode & (user_bits >> 3))
    return bool(mode & (user_bits >> 6))


@attrs.frozen
class _Interpreter:
    executable: str
    bind: tuple[str, ...]  # host directories that must be visible read-only


async def _discover(python: str, env: Mapping[str, str]) -> _Interpreter:
    try:
        done = await trio.run_process(
            [python, "-s", "-P", "-c", _DISCOVER],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=dict(env),
            stdin=subprocess.DEVNULL,
        )
    except OSError as exc:
        raise SandboxUnavailable(f"robot_worker: cannot run the worker's python {python!r}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise SandboxUnavailable(f"robot_worker: the worker's python {python!r} cannot import zmq: {last}")
    info = json.loads(done.stdout)
    candidates = [*info["prefixes"], os.path.dirname(os.path.dirname(info["real"])), info["zmq"]]
    system = [p for p in SYSTEM_PATHS if os.path.isdir(p)]
    system_real = [os.path.realpath(p) for p in system]
    bind: list[str] = []
    for path in sorted({os.path.normpath(p) for p in candidates}, key=len):
        if _covered(path, system) or _covered(os.path.realpath(path), system_real) or _covered(path, bind):
            continue
        bind.append(path)
    return _Interpreter(info["executable"], tuple(bind))


async def _probe_bwrap(bwrap: str, sandbox_args: list[str], identity: Identity | None, env: Mapping[str, str]) -> str:
    """'' if bubblewrap runs a trivial sandbox with these namespaces, else why not."""
    command = ["/bin/true"]
    if identity is not None:
        if shutil.which("setpriv") is None:
            return "setpriv (util-linux) is not installed"
        command = ["setpriv", f"--reuid={identity.uid}", f"--regid={identity.gid}", "--clear-groups", "--", "true"]
    argv = [bwrap, *sandbox_args, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--", *command]
    try:
        with trio.fail_after(PROBE_TIMEOUT):
            done = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False, env=dict(env), stdin=subprocess.DEVNULL
            )
    except (OSError, trio.TooSlowError) as exc:
        return f"bubblewrap did not run: {exc}"
    if done.returncode != 0:
        text = done.stderr.decode(errors="replace").strip().splitlines()
        return f"bubblewrap failed: {text[-1] if text else f'exit code {done.returncode}'}"
    return ""
