"""Waking on changes in one directory: inotify when the kernel offers it, polling otherwise.

``async with watch_directory(path, names) as watcher`` gives a :class:`DirectoryWatcher`;
``await watcher.wait(timeout)`` returns as soon as one of ``names`` is created,
renamed into place, closed after writing, deleted or renamed away (or the directory
itself goes), and at the latest after ``timeout`` seconds. It may also return
spuriously, so callers re-check the files after every wake; events that happen
between two waits are queued by the kernel, so a check-then-wait loop never misses
one.

The inotify descriptor (from ``inotify_simple``) is awaited with
``trio.lowlevel.wait_readable``: no thread, no polling. Without inotify (another
OS, or the per-user watch limit reached) the watcher sleeps instead, starting at
``min_poll`` and doubling after every 8 idle waits up to ``max_poll`` (the shape of
the original 32 ms -> 1 s back-off, with a floor far lower); :meth:`activity`
resets it to ``min_poll``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from pathlib import Path

import trio

__all__ = ["DirectoryWatcher", "watch_directory"]

log = logging.getLogger("switchyard.tensor_session")

try:
    import inotify_simple
except ImportError:  # pragma: no cover - inotify_simple is a dependency, but Linux-only
    inotify_simple = None
    _WATCH_MASK = _SELF_MASK = _OVERFLOW = 0
else:
    _F = inotify_simple.flags
    _WATCH_MASK = (
        _F.CREATE
        | _F.CLOSE_WRITE
        | _F.MOVED_TO
        | _F.DELETE
        | _F.MOVED_FROM
        | _F.DELETE_SELF
        | _F.MOVE_SELF
        | _F.ONLYDIR
    )
    # Events about the directory itself (or a lost queue) always count.
    _SELF_MASK = _F.DELETE_SELF | _F.MOVE_SELF | _F.IGNORED | _F.Q_OVERFLOW | _F.UNMOUNT
    _OVERFLOW = _F.Q_OVERFLOW


class DirectoryWatcher:
    """Waits for changes to some names in one directory (see module docs)."""

    kind = "polling"

    def __init__(self, path: Path, min_poll: float, max_poll: float) -> None:
        self.path = path
        self._min = min_poll
        self._max = max(max_poll, min_poll)
        self._interval = min_poll
        self._idle = 0

    async def wait(self, timeout: float) -> None:
        """Return after a relevant change (or spuriously), or after ``timeout`` s."""
        await trio.sleep(min(timeout, self._interval))
        self._idle += 1
        if self._idle % 8 == 0:
            self._interval = min(self._interval * 2, self._max)

    def activity(self) -> None:
        """Something happened: poll at the fastest rate again."""
        self._interval = self._min
        self._idle = 0

    @property
    def gone(self) -> bool:
        """The watched directory no longer exists."""
        return not self.path.is_dir()


class _InotifyWatcher(DirectoryWatcher):
    kind = "inotify"

    def __init__(self, path: Path, names: Collection[str] | None, notifier: inotify_simple.INotify) -> None:
        super().__init__(path, 0.0, 0.0)
        self._names = frozenset(names) if names is not None else None
        self._inotify = notifier
        self._gone = False

    async def wait(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            while True:
                await trio.lowlevel.wait_readable(self._inotify.fileno())
                if self._relevant(self._inotify.read(timeout=0)):
                    return

    def _relevant(self, events: list[inotify_simple.Event]) -> bool:
        hit = False
        for event in events:
            if event.mask & _SELF_MASK:
                if not event.mask & _OVERFLOW:
                    self._gone = True
                hit = True
            elif self._names is None or event.name in self._names:
                hit = True
        return hit

    def activity(self) -> None:
        pass

    @property
    def gone(self) -> bool:
        return self._gone or not self.path.is_dir()


@asynccontextmanager
async def watch_directory(
    path: str | os.PathLike[str],
    names: Collection[str] | None = None,
    *,
    use_inotify: bool = True,
    min_poll: float = 0.001,
    max_poll: float = 0.032,
) -> AsyncIterator[DirectoryWatcher]:
    """Watch ``path`` for changes to ``names`` (all names if None); see module docs."""
    directory = Path(path)
    notifier = None
    if use_inotify and inotify_simple is not None:
        try:
            notifier = inotify_simple.INotify(nonblocking=True)
            notifier.add_watch(directory, _WATCH_MASK)
        except OSError as exc:
            log.warning(
                "inotify unavailable for %s (%s); polling every %.1f-%.0f ms instead",
                directory,
                exc,
                min_poll * 1e3,
                max_poll * 1e3,
            )
            if notifier is not None:
                notifier.close()
            notifier = None
    if notifier is None:
        yield DirectoryWatcher(directory, min_poll, max_poll)
        return
    try:
        yield _InotifyWatcher(directory, names, notifier)
    finally:
        trio.lowlevel.notify_closing(notifier.fileno())
        notifier.close()
