"""Atomic file replacement: a reader sees the old content or the new, never a mix.

The recipe (ARCHITECTURE, "nothing is lost silently"): write a temporary file in the target's
own directory (so the rename cannot cross file systems), fsync it, ``os.replace`` it over the
target, then fsync the directory so the rename itself survives a power cut. On any failure
the temporary file is removed and the target is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

__all__ = ["atomic_write_bytes", "fsync_directory"]

# New files get the usual 0o666 minus the process umask, applied by the kernel at open().
_NEW_FILE_MODE = 0o666


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """fsync a directory, making renames and creations inside it durable.

    Raises OSError when the directory cannot be opened or synced.
    """
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, create_parents: bool = True) -> None:
    """Replace the file at ``path`` with ``data`` atomically and durably.

    An existing file keeps its permission bits; a new one gets ``0o666`` minus the umask.

    Args:
        path: the file to write.
        data: its complete new content.
        create_parents: create missing parent directories first.

    Raises:
        OSError: the file could not be written; the previous content (if any) is untouched
            and no temporary file is left behind.
    """
    target = Path(path)
    directory = target.parent
    if create_parents:
        directory.mkdir(parents=True, exist_ok=True)
    try:
        mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    tmp = directory / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _NEW_FILE_MODE)
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)
