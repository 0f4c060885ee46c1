"""Confinement of the robot worker's user code: bubblewrap, uid drop, limits, clean env.

:func:`prepare` is called once when the worker actor starts. It decides how user code
will run and returns a :class:`Sandbox` that turns "run child.py for this project"
into a :class:`Launch` (argv, environment, ``Popen`` options) and knows how to signal
what it started. What a caller may rely on:

* **bubblewrap** (``bwrap``) is used when ``mode`` is ``"auto"`` and a probe run of it
  works, or always with ``"required"`` (no usable bwrap: :class:`SandboxUnavailable`,
  one line). The child then sees: a read-only view of the system directories
  (:data:`SYSTEM_PATHS`), the interpreter's prefixes and ``ro_paths`` read-only, its
  project folder read-write at :data:`INSIDE_PROJECT`, a private ``/tmp`` and
  ``/dev/shm`` (tmpfs of ``tmp_bytes`` each), a fresh ``/proc`` of its own PID
  namespace, a minimal ``/dev`` plus ``devices``, and the directory of the ZeroMQ
  sockets read-only at :data:`INSIDE_IPC`. Nothing else of the host exists inside.
  ``--die-with-parent`` and the PID namespace mean nothing it starts outlives it.
* When the server runs as root, user code runs as ``user`` (default ``nobody``), with
  only ``groups`` as supplementary groups and ``no_new_privs``: with bubblewrap the
  drop happens inside the sandbox (``setpriv``, after bubblewrap has set up the
  mounts as root, so paths only root can traverse, such as a pyenv under ``/root``,
  can still be bound); without it, in the forked child before ``exec``.
* Without bubblewrap: the same limits, uid drop and environment, a new session, and
  every signal goes to the whole process group. ``network = false`` is refused (it
  needs a network namespace); so is a uid drop when the dropped uid could not reach
  the interpreter, ``child.py``, the socket directory or the storage.
* The environment is built from scratch (:func:`clean_env`): never the server's
  variables, only ``pass_env`` names copied and ``env`` values added.
* Limits (:class:`Limits`) are applied by ``child.py`` itself as hard rlimits before
  it loads any user code (:meth:`Limits.rlimits`).

Blocking helpers (:meth:`Sandbox.prepare_project`, :func:`count_tasks`) are meant for
``trio.to_thread``.

This module holds :func:`prepare` and :class:`Sandbox` (building and signalling the
child's command); the settings and value types live in
:mod:`~switchyard.services.robot.sandbox_config`, the host probes in
:mod:`~switchyard.services.robot.sandbox_host`. Every name is re-exported here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from switchyard.services.robot.sandbox_config import (
    DEFAULT_PATH as DEFAULT_PATH,
)
from switchyard.services.robot.sandbox_config import (
    INSIDE_CHILD,
    INSIDE_IPC,
    INSIDE_PROJECT,
    SANDBOX_MODES,
    SYSTEM_PATHS,
    Identity,
    Launch,
    Limits,
    SandboxSettings,
    SandboxUnavailable,
    clean_env,
)
from switchyard.services.robot.sandbox_config import (
    INSIDE_RUN as INSIDE_RUN,
)
from switchyard.services.robot.sandbox_config import (
    SandboxMode as SandboxMode,
)
from switchyard.services.robot.sandbox_host import (
    PROBE_TIMEOUT as PROBE_TIMEOUT,
)
from switchyard.services.robot.sandbox_host import (
    _covered,
    _discover,
    _Interpreter,
    _probe_bwrap,
    _reachable,
    _resolve_identity,
    count_tasks,
)

__all__ = [
    "INSIDE_CHILD",
    "INSIDE_IPC",
    "INSIDE_PROJECT",
    "SANDBOX_MODES",
    "SYSTEM_PATHS",
    "Identity",
    "Launch",
    "Limits",
    "Sandbox",
    "SandboxSettings",
    "SandboxUnavailable",
    "clean_env",
    "count_tasks",
    "prepare",
]

LAUNCHER_SCRIPT = str(Path(__file__).with_name("launcher.py"))


class Sandbox:
    """How user code runs, decided once by :func:`prepare`."""

    def __init__(
        self,
        settings: SandboxSettings,
        *,
        bwrap: str | None,
        identity: Identity | None,
        interpreter: _Interpreter,
        child_script: str,
        hidden: Sequence[str],
        server_env: Mapping[str, str],
        warning: str | None,
    ) -> None:
        self.settings = settings
        #: Path of bubblewrap when it is used, else None.
        self.bwrap = bwrap
        #: The uid user code runs as, or None when the server is not root (no drop).
        self.identity = identity
        self.interpreter = interpreter
        self.child_script = child_script
        self.hidden = tuple(hidden)
        self._server_env = dict(server_env)
        #: The one line logged at start when filesystem confinement is off.
        self.warning = warning

    @property
    def uses_bwrap(self) -> bool:
        return self.bwrap is not None

    # -- files the child must reach --------------------------------------------------
    def prepare_dir(self, path: str | Path) -> None:
        """Let the child search ``path`` (the socket directory): mode 0711 under a uid drop."""
        if self.identity is not None:
            os.chmod(path, 0o711)

    def prepare_socket(self, path: str | Path) -> None:
        """Let the child connect to the Unix socket at ``path`` (and nobody else but us)."""
        if self.identity is not None:
            os.chown(path, self.identity.uid, self.identity.gid)
            os.chmod(path, 0o600)

    def prepare_project(self, project: Path) -> None:
        """Give a freshly installed project folder to the child's uid (blocking).

        Children first, the folder itself last, so nothing in it is writable by the
        child's uid before all of it is owned by it. Symlinks are not followed.
        """
        ident = self.identity
        if ident is None:
            return
        if os.lstat(project).st_uid != ident.uid:
            for root, dirs, files in os.walk(project, topdown=False):
                for name in (*files, *dirs):
                    os.chown(os.path.join(root, name), ident.uid, ident.gid, follow_symlinks=False)
            os.chown(project, ident.uid, ident.gid, follow_symlinks=False)
        os.chmod(project, 0o700)

    def open_storage(self, storage_root: Path, projects: Path, releases: Path) -> None:
        """Without bubblewrap, under a uid drop: search-only (0711) on the way to the releases.

        The uid can then reach its own release by name but list nothing; ``default/``
        and staging folders stay 0700 root.
        """
        if self.identity is None or self.uses_bwrap:
            return
        for path in (storage_root, projects, releases):
            os.chmod(path, 0o711)

    # -- launching ---------------------------------------------------------------------
    def launch(
        self,
        *,
        project: Path,
        ipc_dir: str,
        cmd_name: str,
        pub_name: str,
        rlimits: Mapping[str, int],
        lifeline: int,
    ) -> Launch:
        """The command that runs child.py for ``project`` with sockets in ``ipc_dir``.

        ``lifeline`` is the read end of a pipe whose write end the server keeps open:
        with bubblewrap, :mod:`launcher` holds it and takes the sandbox down at EOF.
        """
        limits = json.dumps(dict(rlimits), separators=(",", ":"))
        python_bin = os.path.dirname(self.interpreter.executable)
        if self.bwrap is None:
            argv = [
                self.interpreter.executable,
                "-s",
                "-P",
                "-u",
                self.child_script,
                f"ipc://{ipc_dir}/{cmd_name}",
                f"ipc://{ipc_dir}/{pub_name}",
                str(project),
                limits,
            ]
            env = clean_env(self._server_env, self.settings, home=str(project), python_bin=python_bin)
            options: dict[str, Any] = {"start_new_session": True}
            if self.identity is not None:
                options.update(user=self.identity.uid, group=self.identity.gid, extra_groups=list(self.identity.groups))
            return Launch(argv, env, str(project), options)
        command = [
            self.interpreter.executable,
            "-s",
            "-P",
            "-u",
            INSIDE_CHILD,
            f"ipc://{INSIDE_IPC}/{cmd_name}",
            f"ipc://{INSIDE_IPC}/{pub_name}",
            INSIDE_PROJECT,
            limits,
        ]
        if self.identity is not None:
            ident = self.identity
            groups = ",".join(str(g) for g in ident.groups)
            command = [
                "setpriv",
                f"--reuid={ident.uid}",
                f"--regid={ident.gid}",
                f"--groups={groups}" if groups else "--clear-groups",
                "--no-new-privs",
                "--",
                *command,
            ]
        argv = [
            self.interpreter.executable,
            "-s",
            "-P",
            LAUNCHER_SCRIPT,
            str(lifeline),
            self.bwrap,
            *self._namespace_args(),
            *self._filesystem_args(project=project, ipc_dir=ipc_dir),
            "--chdir",
            INSIDE_PROJECT,
            "--",
            *command,
        ]
        env = clean_env(self._server_env, self.settings, home="/tmp", python_bin=python_bin)
        return Launch(argv, env, "/", {"pass_fds": (lifeline,)})

    def _namespace_args(self) -> list[str]:
        args = ["--unshare-pid", "--unshare-ipc", "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
        if self.identity is None and os.geteuid() != 0:
            args.append("--unshare-user")
        if not self.settings.network:
            args.append("--unshare-net")
        return args

    def _filesystem_args(self, *, project: Path, ipc_dir: str) -> list[str]:
        args: list[str] = []
        made: set[str] = {"/"}  # directories that exist inside (created or mounted)
        mounted: list[str] = []  # trees mounted from the host (their insides exist)

        def mount(option: str, source: str, dest: str) -> None:
            # bubblewrap creates missing mount points 0700 when it runs as root:
            # create each missing parent 0755 first so the dropped uid can pass.
            for parent in reversed(Path(dest).parents):
                text = str(parent)
                if text not in made and not _covered(text, mounted):
                    args.extend(["--perms", "0755", "--dir", text])
                    made.add(text)
            args.extend([option, source, dest])
            made.add(dest)
            mounted.append(dest)

        for path in SYSTEM_PATHS:
            if os.path.islink(path):
                args.extend(["--symlink", os.readlink(path), path])
                made.add(path)
            elif os.path.isdir(path):
                mount("--ro-bind", path, path)
        args.extend(["--proc", "/proc", "--dev", "/dev"])
        made.update({"/proc", "/dev"})
        size = str(self.settings.limits.tmp_bytes) if self.settings.limits.tmp_bytes > 0 else None
        for tmp in ("/tmp", "/dev/shm"):  # before the binds: an interpreter may live under /tmp
            args.extend(["--perms", "1777"])
            if size:
                args.extend(["--size", size])
            args.extend(["--tmpfs", tmp])
            made.add(tmp)
        for path in self.interpreter.bind:
            mount("--ro-bind", path, path)
        for path in self.settings.ro_paths:
            mount("--ro-bind-try", path, path)
        for device in self.settings.devices:
            mount("--dev-bind-try", device, device)
        if self.settings.network and os.path.islink("/etc/resolv.conf"):
            # e.g. systemd-resolved's stub under /run: without it no name resolves
            target = os.path.dirname(os.path.realpath("/etc/resolv.conf"))
            if not _covered(target, mounted):
                mount("--ro-bind-try", target, target)
        mount("--bind", str(project), INSIDE_PROJECT)
        mount("--ro-bind", ipc_dir, INSIDE_IPC)
        mount("--ro-bind", self.child_script, INSIDE_CHILD)
        for path in self.hidden:
            if _covered(path, mounted):  # storage inside a bound tree: hide it
                args.extend(["--tmpfs", path])
        return args

    # -- signals -------------------------------------------------------------------------
    def signal(self, process: trio.Process, signum: int) -> None:
        """Send ``signum`` to everything the child started.

        With bubblewrap that is the launcher (its death takes bubblewrap and the whole
        PID namespace with it); without, the child's process group.
        """
        if self.bwrap is None:
            try:
                os.killpg(process.pid, signum)
                return
            except (ProcessLookupError, PermissionError):
                pass
        if process.returncode is None:
            process.send_signal(signum)

    def sweep(self, process: trio.Process) -> None:
        """After the child exited: kill what is left of its process group (no bubblewrap)."""
        if self.bwrap is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _start_warning(settings: SandboxSettings, reason: str, identity: Identity | None) -> str:
    who = (
        f"uid {identity.uid} ({identity.name})"
        if identity is not None
        else "the server's own uid (it can read what the server reads and signal it)"
    )
    return (
        f"robot_worker: filesystem confinement is OFF ({reason}): user code sees the host's files as {who}; "
        "resource limits, a clean environment, a new session and process-group kill still apply"
    )


async def prepare(
    settings: SandboxSettings,
    *,
    python: str,
    child_script: str,
    storage_root: Path,
    ipc_dir: str,
    server_env: Mapping[str, str] | None = None,
) -> Sandbox:
    """Decide how user code runs; raises :class:`SandboxUnavailable` (one line) if it cannot."""
    env_source = dict(os.environ if server_env is None else server_env)
    identity = _resolve_identity(settings)
    if identity is not None and identity.uid == 0:
        identity = None  # user = "root": nothing to drop (and the docs say what that means)
    probe_env = clean_env(env_source, settings, home="/tmp", python_bin=os.path.dirname(python))
    interpreter = await _discover(python, probe_env)
    bwrap: str | None = shutil.which("bwrap") if settings.mode != "off" else None
    reason = "sandbox = 'off'" if settings.mode == "off" else "bubblewrap (bwrap) is not installed"
    if bwrap is not None:
        probe_args = ["--unshare-pid", "--die-with-parent"]
        if identity is None and os.geteuid() != 0:
            probe_args.append("--unshare-user")
        if not settings.network:
            probe_args.append("--unshare-net")
        why = await _probe_bwrap(bwrap, probe_args, identity, probe_env)
        if why:
            bwrap, reason = None, why
    if bwrap is None and settings.mode == "required":
        raise SandboxUnavailable(
            f"robot_worker: sandbox = 'required' but {reason}; install bubblewrap (Debian: apt install bubblewrap) "
            "or set sandbox = 'auto'"
        )
    warning = None
    if bwrap is None:
        if not settings.network:
            raise SandboxUnavailable(
                f"robot_worker: network = false needs bubblewrap for a network namespace, but {reason}"
            )
        if identity is not None:
            checks = [
                (interpreter.executable, stat.S_IXUSR),
                *((path, stat.S_IXUSR) for path in interpreter.bind),
                (child_script, stat.S_IRUSR),
                (os.path.dirname(ipc_dir), stat.S_IXUSR),  # the folder itself is made 0711
                (str(storage_root.parent), stat.S_IXUSR),
            ]
            for path, want in checks:
                problem = _reachable(path, identity, want=want)
                if problem is not None:
                    raise SandboxUnavailable(
                        f"robot_worker: without bubblewrap user code runs as uid {identity.uid}, which cannot "
                        f"reach {path} ({problem}); install bubblewrap, or use a python/ipc_dir/storage_root it can reach"
                    )
        warning = _start_warning(settings, reason, identity)
    return Sandbox(
        settings,
        bwrap=bwrap,
        identity=identity,
        interpreter=interpreter,
        child_script=child_script,
        hidden=(str(storage_root), ipc_dir),
        server_env=env_source,
        warning=warning,
    )
