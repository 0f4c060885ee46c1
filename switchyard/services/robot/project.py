"""Robot projects on disk: validate an uploaded ZIP, install it atomically.

Layout under ``<storage_root>/projects``::

    default/                  the default project; seeded from the package when missing
                              or empty, otherwise left alone (users may edit it)
    current -> .releases/<id> symlink to the installed project, swapped by one rename
    .releases/<id>/           installed project trees (older ones removed after a swap)
    .staging-<id>/            an extraction in progress (removed on any failure)

What a caller may rely on:

* :func:`inspect_zip` reads only the ZIP's directory and refuses, with a
  :class:`ProjectRejected` whose message says why: data over ``max_zip_bytes``, not a
  ZIP, more than ``max_entries`` entries, a total uncompressed size over
  ``max_total_bytes``, an entry whose compression ratio exceeds ``max_ratio`` (zip
  bombs), absolute paths or drive letters, ``..`` components, symlinks or other
  special files, encrypted entries, duplicate names, and a missing ``main.py`` (it must
  be at the root or inside one single top-level folder, which is then stripped);
* :func:`install_zip` extracts into a staging folder (re-checking the real sizes while
  writing, since ZIP headers can lie) and only then points ``current`` at it, so a
  rejected or failed upload leaves ``current`` exactly as it was, and a reader sees
  either the old tree or the new one, never a mix;
* the storage folder (``projects``' parent), ``projects/``, ``.releases/``, ``default/``
  and staging folders are created mode 0700 (only the server's uid can read them);
* all functions here block (file system, zlib): call them through ``trio.to_thread``.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import time
import uuid
import zipfile
import zlib
from importlib import resources
from pathlib import Path, PurePosixPath

import attrs

__all__ = [
    "InstallResult",
    "ProjectPlan",
    "ProjectRejected",
    "ZipLimits",
    "current_project",
    "ensure_current",
    "ensure_layout",
    "inspect_zip",
    "install_zip",
    "shipped_default",
]

_JUNK_DIRS = ("__MACOSX",)  # resource forks added by macOS Finder
_JUNK_NAMES = (".DS_Store", "Thumbs.db")
_DRIVE = re.compile(r"^[A-Za-z]:")
_CHUNK = 1 << 16
_RATIO_MIN_BYTES = 1 << 20  # small files may compress extremely well (padding, zeros) harmlessly


@attrs.frozen
class ZipLimits:
    max_zip_bytes: int = 100 * 1024 * 1024
    max_entries: int = 2000
    max_total_bytes: int = 512 * 1024 * 1024
    max_ratio: float = 200.0


class ProjectRejected(ValueError):
    """The upload is not an acceptable project; the message is meant for the user."""


@attrs.frozen
class ProjectPlan:
    files: tuple[tuple[zipfile.ZipInfo, str], ...]  # (entry, path relative to the project root)
    prefix: str  # single top-level folder that held main.py ("" if at the root)
    total_bytes: int
    has_requirements: bool


@attrs.frozen
class InstallResult:
    path: Path
    files: int
    total_bytes: int
    prefix: str
    has_requirements: bool


def _entry_path(info: zipfile.ZipInfo) -> str | None:
    """The cleaned relative path of an entry; None for junk; raises for hostile names."""
    raw = info.filename
    if "\x00" in raw:
        raise ProjectRejected(f"entry name holds a NUL byte: {raw!r}")
    name = raw.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name):
        raise ProjectRejected(f"absolute path in ZIP: {raw!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ProjectRejected(f"path traversal ('..') in ZIP: {raw!r}")
    if not parts:
        return None
    clean = "/".join(parts)
    if parts[0] in _JUNK_DIRS or parts[-1] in _JUNK_NAMES:
        return None
    return clean


def _file_type(info: zipfile.ZipInfo) -> int:
    return stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0


def inspect_zip(data: bytes, limits: ZipLimits) -> ProjectPlan:
    """Validate ``data`` as a project ZIP without extracting it (see module doc)."""
    if len(data) > limits.max_zip_bytes:
        raise ProjectRejected(f"ZIP is {len(data)} bytes; the limit is {limits.max_zip_bytes}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as exc:
        raise ProjectRejected(f"not a valid ZIP archive: {exc}") from None
    if len(infos) > limits.max_entries:
        raise ProjectRejected(f"ZIP has {len(infos)} entries; the limit is {limits.max_entries}")
    files: list[tuple[zipfile.ZipInfo, str]] = []
    seen: set[str] = set()
    total = 0
    for info in infos:
        path = _entry_path(info)
        kind = _file_type(info)
        if kind == stat.S_IFLNK:
            raise ProjectRejected(f"symlink in ZIP: {info.filename!r}")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ProjectRejected(f"special file in ZIP: {info.filename!r}")
        if path is None or info.is_dir() or kind == stat.S_IFDIR:
            continue
        if info.flag_bits & 0x1:
            raise ProjectRejected(f"encrypted entry in ZIP: {info.filename!r}")
        if path in seen:
            raise ProjectRejected(f"duplicate entry in ZIP: {path!r}")
        seen.add(path)
        total += info.file_size
        if total > limits.max_total_bytes:
            raise ProjectRejected(f"ZIP expands to more than {limits.max_total_bytes} bytes")
        if info.file_size >= _RATIO_MIN_BYTES and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            ratio = info.file_size / max(info.compress_size, 1)
            raise ProjectRejected(
                f"entry {path!r} compresses {ratio:.0f}:1 (limit {limits.max_ratio:g}:1); refusing a possible zip bomb"
            )
        files.append((info, path))
    prefix = _project_prefix(seen)
    stripped = tuple((info, path[len(prefix) :]) for info, path in files)
    return ProjectPlan(stripped, prefix, total, "requirements.txt" in {p for _, p in stripped})


def _project_prefix(paths: set[str]) -> str:
    if "main.py" in paths:
        return ""
    tops = {p.split("/", 1)[0] for p in paths}
    if len(tops) == 1:
        top = next(iter(tops))
        if f"{top}/main.py" in paths:
            return top + "/"
    raise ProjectRejected("no main.py: it must be at the root of the ZIP or inside a single top-level folder")


def _extract(data: bytes, plan: ProjectPlan, dest: Path, limits: ZipLimits) -> None:
    archive = zipfile.ZipFile(io.BytesIO(data))
    written_total = 0
    for info, rel in plan.files:
        target = dest.joinpath(*PurePosixPath(rel).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        try:
            with archive.open(info) as source, open(target, "xb") as out:
                while chunk := source.read(_CHUNK):
                    written += len(chunk)
                    written_total += len(chunk)
                    if written > info.file_size or written_total > limits.max_total_bytes:
                        raise ProjectRejected(f"entry {rel!r} expands beyond its declared size; refusing")
                    out.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise ProjectRejected(f"cannot extract {rel!r}: {exc}") from None


def _releases(projects: Path) -> Path:
    return projects / ".releases"


def _private_dir(path: Path) -> None:
    """Create ``path`` mode 0700 if missing (an existing one keeps its mode)."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o700)  # whatever the umask


def _new_id() -> str:
    return f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"


def _point_current(projects: Path, release: Path) -> None:
    """Atomically make ``projects/current`` a symlink to ``release``, then drop old releases."""
    link = projects / f".current-{uuid.uuid4().hex[:8]}"
    os.symlink(os.path.relpath(release, projects), link)
    os.replace(link, projects / "current")
    for old in _releases(projects).iterdir():
        if old != release:
            shutil.rmtree(old, ignore_errors=True)


def install_zip(projects: Path, data: bytes, limits: ZipLimits) -> InstallResult:
    """Validate and install ``data`` as the current project (see module doc)."""
    plan = inspect_zip(data, limits)
    staging = projects / f".staging-{_new_id()}"
    _private_dir(staging)
    try:
        _extract(data, plan, staging, limits)
        _private_dir(_releases(projects))
        release = _releases(projects) / _new_id()
        os.rename(staging, release)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _point_current(projects, release)
    return InstallResult(release, len(plan.files), plan.total_bytes, plan.prefix, plan.has_requirements)


def shipped_default() -> Path:
    """The default project that ships with the package."""
    return Path(str(resources.files("switchyard.apps") / "robot_default"))


def _copy_project(source: Path, dest: Path) -> None:
    shutil.copytree(
        source, dest, ignore=shutil.ignore_patterns("__pycache__", "__init__.py", "*.pyc"), dirs_exist_ok=True
    )
    os.chmod(dest, 0o700)  # copytree copied the source folder's mode


def _has_files(path: Path) -> bool:
    return path.is_dir() and any(p.is_file() for p in path.rglob("*"))


def ensure_layout(projects: Path, default_source: Path | None = None) -> None:
    """Create the layout; seed ``default/`` if empty; make ``current`` a release link.

    A ``current`` that is a plain directory (older layout, or made by hand) becomes a
    release. An empty or missing ``current`` gets a copy of ``default/``.
    """
    projects.parent.parent.mkdir(parents=True, exist_ok=True)
    _private_dir(projects.parent)
    _private_dir(projects)
    default = projects / "default"
    if not _has_files(default):
        _private_dir(default)
        _copy_project(default_source or shipped_default(), default)
    for leftover in projects.glob(".staging-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in projects.glob(".current-*"):
        leftover.unlink(missing_ok=True)
    _private_dir(_releases(projects))
    current = projects / "current"
    if current.is_dir() and not current.is_symlink():
        release = _releases(projects) / _new_id()
        os.rename(current, release)
        _point_current(projects, release)
    ensure_current(projects)


def ensure_current(projects: Path) -> bool:
    """Copy ``default/`` into a new release if ``current`` is missing or empty. True if copied."""
    current = projects / "current"
    if _has_files(current):
        return False
    release = _releases(projects) / _new_id()
    staging = projects / f".staging-{_new_id()}"
    try:
        _private_dir(staging)
        _copy_project(projects / "default", staging)
        _private_dir(_releases(projects))
        os.rename(staging, release)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _point_current(projects, release)
    return True


def current_project(projects: Path) -> Path:
    """The resolved directory ``current`` points at."""
    return (projects / "current").resolve()
