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

import mmap
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from switchyard.services.tensor.tsr import HEADER_SIZE, TSRError, decode, encode_frames, parse_header

__all__ = ["DEFAULT_MMAP_THRESHOLD", "load_tsr", "save_tsr"]

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


def _write_all(fd: int, data: Any) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def save_tsr(path: str | os.PathLike[str], array: Any) -> None:
    """Write ``array`` to ``path`` as TSR, atomically (temporary file + rename)."""
    target = Path(path)
    head, data = encode_frames(array)  # validates before touching the disk
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            _write_all(fd, head)
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
