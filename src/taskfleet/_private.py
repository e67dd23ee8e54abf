"""Files and directories only their owner can read: the state directory, the spool, the
embedded server's store and credentials (``docs/deployment.md``, Security).

Modes are set when a path is created, not left to the process's umask; a path that already exists
and belongs to this user is tightened, so a state directory made by an older version or by a
service manager with a looser mode is closed too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["private_dir", "private_file", "tighten"]

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and missing parents) with mode 0700 for its last component; return it."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    tighten(path, DIR_MODE)
    return path


def private_file(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` empty with mode 0600 unless it exists (then tighten it); never follows a
    symbolic link in its last component."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        _tighten_fd(fd, FILE_MODE)
    finally:
        os.close(fd)
    return Path(path)


def tighten(path: str | os.PathLike[str], mode: int = FILE_MODE) -> None:
    """Remove group and other permissions from ``path`` if it exists and is this user's."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    if st.st_uid == os.getuid() and not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & mode)


def _tighten_fd(fd: int, mode: int) -> None:
    st = os.fstat(fd)
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & mode)
