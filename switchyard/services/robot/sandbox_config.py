"""What the robot worker's sandbox is asked for, and the values it hands out.

:class:`SandboxSettings` is the manifest's request (mode, network, uid, groups,
:class:`Limits`, environment, extra paths and devices); :class:`Identity` is the uid
user code runs as; :class:`Launch` is one ready-to-run command; :func:`clean_env`
builds a child's whole environment. The paths the sandbox shows inside
(:data:`INSIDE_PROJECT`, :data:`INSIDE_IPC`, :data:`INSIDE_CHILD`) and the host
directories it shows read-only (:data:`SYSTEM_PATHS`) are fixed here.
:mod:`switchyard.services.robot.sandbox` re-exports all of it.

Nothing here touches the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from switchyard.runtime.errors import ConfigError

__all__ = [
    "INSIDE_CHILD",
    "INSIDE_IPC",
    "INSIDE_PROJECT",
    "SANDBOX_MODES",
    "SYSTEM_PATHS",
    "Identity",
    "Launch",
    "Limits",
    "SandboxSettings",
    "SandboxUnavailable",
    "clean_env",
]

SandboxMode = Literal["auto", "required", "off"]
SANDBOX_MODES: tuple[str, ...] = ("auto", "required", "off")
#: Host directories the sandbox sees read-only (symlinks, as on merged-/usr systems,
#: are recreated as symlinks).
SYSTEM_PATHS: tuple[str, ...] = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
INSIDE_PROJECT = "/project"
INSIDE_RUN = "/run/switchyard"
INSIDE_IPC = f"{INSIDE_RUN}/ipc"
INSIDE_CHILD = f"{INSIDE_RUN}/child.py"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxUnavailable(ConfigError):
    """The configured confinement cannot be provided; the message is one line for the operator."""


@attrs.frozen
class Limits:
    """Resource limits for user code; 0 means no limit (the inherited one stays)."""

    memory_bytes: int = 2 * 1024**3  # RLIMIT_AS
    processes: int = 256  # RLIMIT_NPROC, tasks beyond those the uid already runs
    open_files: int = 1024  # RLIMIT_NOFILE
    file_bytes: int = 1024**3  # RLIMIT_FSIZE, per file written
    cpu_seconds: int = 0  # RLIMIT_CPU
    tmp_bytes: int = 256 * 1024**2  # size of the private /tmp and /dev/shm (bubblewrap only)

    def rlimits(self, existing_tasks: int = 0) -> dict[str, int]:
        """The ``{name: value}`` child.py applies as soft = hard limits.

        ``RLIMIT_NPROC`` counts every task (process or thread) of the real uid on the
        host, so the value is ``existing_tasks + processes``.
        """
        out = {
            "AS": self.memory_bytes,
            "NPROC": existing_tasks + self.processes if self.processes else 0,
            "NOFILE": self.open_files,
            "FSIZE": self.file_bytes,
            "CPU": self.cpu_seconds,
        }
        return {name: value for name, value in out.items() if value > 0}


@attrs.frozen
class SandboxSettings:
    """What the manifest asks for (see docs/robot.md, "Security model")."""

    mode: SandboxMode = "auto"
    network: bool = True
    user: str = "nobody"
    groups: tuple[str, ...] = ()
    limits: Limits = Limits()
    env: Mapping[str, str] = attrs.field(factory=dict)
    pass_env: tuple[str, ...] = ()
    ro_paths: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()


@attrs.frozen
class Identity:
    """The unprivileged uid user code runs as (only when the server is root)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    name: str = ""


@attrs.frozen
class Launch:
    """How to start one child: ``trio.run_process(argv, env=env, cwd=cwd, **options)``."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    options: dict[str, Any]


def clean_env(
    server_env: Mapping[str, str], settings: SandboxSettings, *, home: str, python_bin: str
) -> dict[str, str]:
    """The child's whole environment: fixed entries, ``pass_env`` copies, ``env`` values."""
    env = {
        "PATH": f"{python_bin}:{DEFAULT_PATH}" if python_bin else DEFAULT_PATH,
        "HOME": home,
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",  # the project folder stays as uploaded
    }
    for name in settings.pass_env:
        if name in server_env:
            env[name] = server_env[name]
    env.update(settings.env)
    return env
