"""Per-pool scratch directories (metrics files, the in-flight ledger) that outlive no one.

A supervisor removes its directories when it stops. One killed with ``-9`` (or by the OOM
killer) cannot, so each directory carries a lock file the owner holds (``flock``) for the
pool's life; the kernel drops the lock when the process dies, however it dies. A pool that
starts removes the directories of its kind whose lock it can take: their owner is gone.
``flock`` works across PID namespaces (containers sharing ``/tmp`` or ``/dev/shm``), where a
pid check would not. Directories without a lock file (an older taskfleet) are left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time

__all__ = ["ScratchDir"]

log = logging.getLogger("taskfleet.supervisor")

LOCK_NAME = ".owner"
#: A lock file younger than this may belong to a pool between creating and locking it.
MIN_ORPHAN_AGE = 10.0


class ScratchDir:
    """A new ``taskfleet-<kind>-*`` directory under ``parent`` (None: the temp dir), locked.

    Creating one first removes orphans of the same kind. :meth:`remove` deletes it and
    releases the lock.
    """

    def __init__(self, kind: str, parent: str | None = None) -> None:
        self.prefix = f"taskfleet-{kind}-"
        base = parent or tempfile.gettempdir()
        removed = remove_orphans(base, self.prefix)
        if removed:
            log.info(
                "removed %d %s director%s left by killed pools",
                removed,
                kind,
                "y" if removed == 1 else "ies",
            )
        self.path = tempfile.mkdtemp(prefix=self.prefix, dir=base)
        self._fd: int | None = os.open(
            os.path.join(self.path, LOCK_NAME), os.O_CREAT | os.O_RDWR, 0o600
        )
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def remove(self) -> None:
        """Delete the directory, then release the lock. Safe to call twice."""
        shutil.rmtree(self.path, ignore_errors=True)
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def remove_orphans(base: str, prefix: str) -> int:
    """Remove ``base/<prefix>*`` directories whose owner is gone; returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(base))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False) and _orphaned(entry.path):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed


def _orphaned(path: str) -> bool:
    """Whether the directory's lock file exists, is not new, and nobody holds its lock.

    The lock taken here to find out is released when the function returns (the directory is
    removed right after; a pool never reuses a directory, so nothing can claim it meanwhile).
    """
    lock = os.path.join(path, LOCK_NAME)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return False  # no lock file: not ours to judge
    try:
        if time.time() - os.fstat(fd).st_mtime < MIN_ORPHAN_AGE:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held: its pool is alive
        return True
    finally:
        os.close(fd)
