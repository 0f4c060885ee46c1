"""TSR tensors on disk: memory-mapped loading and atomic saving.

What a caller may rely on:

* :func:`load_tsr` returns a writable array. Files of ``mmap_threshold`` bytes or
  more are mapped copy-on-write (``MAP_PRIVATE``): nothing is copied up front (on
  Linux the pages are mapped at once, read-only, with ``MADV_POPULATE_READ``), and
  writing to the array never changes the file. Smaller files are read in one go.
* With ``unlink=True`` the file is removed right after it is opened, so a writer
  that later recreates the same path (the C++ client re-sending a tag) gets a fresh
  inode and can never truncate pages under a live mapping.
* A malformed file raises :class:`~switchyard.services.tensor.tsr.TSRError` naming the
  field; a missing one raises ``FileNotFoundError``.
* :func:`save_tsr` writes to a hidden temporary name in the same directory and
  renames it into place, so a reader never sees a partial file.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import mmap
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from switchyard.services.tensor.tsr import HEADER_SIZE, TSRError, decode, encode_frames, parse_header

__all__ = ["DEFAULT_MMAP_THRESHOLD", "load_tsr", "remove_files", "save_tsr"]

#: Files at least this big are memory-mapped instead of read.
DEFAULT_MMAP_THRESHOLD = 256 * 1024


def load_tsr(
    path: str | os.PathLike[str],
    *,
    mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
    unlink: bool = False,
    max_size: int | None = None,
) -> np.ndarray:
    """Load the tensor stored at ``path``.

    ``max_size`` (bytes, header included) rejects larger files with a ``length``
    TSRError before anything is mapped or read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if unlink:
            os.unlink(path)
        size = os.fstat(fd).st_size
        if max_size is not None and size > max_size:
            raise TSRError("length", f"{os.fspath(path)} is {size} bytes, over the {max_size}-byte limit")
        if size >= max(mmap_threshold, HEADER_SIZE + 1):
            # Check the header first so a bogus file never gets mapped at all.
            parse_header(os.pread(fd, HEADER_SIZE, 0))
            mapped = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
            _prefault(mapped)
            return decode(mapped)
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = os.readv(fd, [view[got:]])
            if n == 0:  # the file shrank under us: decode() reports the short length
                break
            got += n
        return decode(view[:got])
    finally:
        os.close(fd)


#: Linux's ``MADV_POPULATE_READ`` (5.14+; Python does not name it yet).
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)


def _prefault(mapped: mmap.mmap) -> None:
    """Map every page of ``mapped`` read-only in one call (no copy: copy-on-write
    still happens only on a write). Without it each 4 KiB page costs a fault when
    first read; for 64 MiB echoed back that was ~10x the time of the writes. Older
    kernels refuse the advice; the pages are then faulted in as they are read."""
    if sys.platform.startswith("linux") and hasattr(mapped, "madvise"):
        try:
            mapped.madvise(_MADV_POPULATE_READ)
        except OSError:
            pass


def _write_all(fd: int, *parts: Any) -> None:
    """Write ``parts`` in order with as few calls as the kernel allows (one writev as
    a rule: Linux stops a call at 2 GiB - 4 KiB, and a signal may cut one short)."""
    views = [memoryview(p).cast("B") for p in parts]
    views = [v for v in views if v]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if views and written:
            views[0] = views[0][written:]


def save_tsr(path: str | os.PathLike[str], array: Any, *, old: list[Path] | None = None) -> None:
    """Write ``array`` to ``path`` as TSR: to a temporary name, then renamed into place.

    A reader never sees a partial file: it finds the old file, no file (for a moment,
    when one is replaced) or the new file whole. The session protocol reads a result
    only once a response names it, and that response is written after this returns.

    With ``old`` given, a file already at ``path`` is renamed to a hidden name that is
    appended to ``old`` instead of being removed, for the caller to remove later, off
    its critical path (freeing a 64 MiB file's pages takes ~6 ms).
    """
    target = Path(path)
    head, data = encode_frames(array)  # validates before touching the disk
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    _unlink_quietly(tmp)  # truncating a stale one would start its writeback (see below)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            _reserve(fd, len(head) + len(data))
            _write_all(fd, head, data)
        finally:
            os.close(fd)
        # No fsync: the peer needs the rename to be atomic, not the data to be durable
        # (a session's files mean nothing after a crash). And the old file goes first:
        # renaming over an existing file makes ext4 (auto_da_alloc) start writing the
        # new one to disk at once, which cost 60-150 ms per 64 MiB result here.
        if old is None:
            _unlink_quietly(target)
        else:
            aside = target.with_name(f".{target.name}.{os.getpid()}.{next(_ASIDE)}.old")
            try:
                os.rename(target, aside)
                old.append(aside)
            except FileNotFoundError:
                pass
        os.rename(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise


_ASIDE = itertools.count()

#: Results at least this big get their blocks reserved before they are written.
_RESERVE_MIN = 1 << 20
_fallocate: Any = None


def _reserve(fd: int, size: int) -> None:
    """Reserve ``size`` bytes for a new file in one call (Linux ``fallocate``).

    Without it ext4 reserves blocks folio by folio as the write fills the page
    cache: 64 MiB took ~25 ms to write, ~17.5 ms after one fallocate. The raw call
    (through ctypes) is used rather than ``os.posix_fallocate``, which glibc emulates
    by writing a byte per block where the filesystem cannot allocate; then, and off
    Linux, nothing is reserved. A full disk raises ``OSError`` (ENOSPC) here.
    """
    global _fallocate
    if size < _RESERVE_MIN or not sys.platform.startswith("linux"):
        return
    if _fallocate is None:
        _fallocate = _load_fallocate()
    if not _fallocate:
        return
    if _fallocate(fd, 0, 0, size) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(err, os.strerror(err))
        # EOPNOTSUPP, ENOSYS, EINVAL...: the write reserves as it goes


def _load_fallocate() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):
        return False
    fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    fn.restype = ctypes.c_int
    return fn


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_files(paths: list[Path]) -> None:
    """Unlink every path (missing ones are skipped); for what ``save_tsr(old=...)`` set aside."""
    for path in paths:
        _unlink_quietly(path)
