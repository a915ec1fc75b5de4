"""The few file-system primitives every durable write in quorumkv goes through.

What a power cut does decides the shape of this module. Data handed to
``write()`` sits in the page cache until the kernel writes it back, in any
order and possibly half of it; only a completed ``fsync``/``fdatasync`` makes
it durable. A new, renamed or removed *name* lives in the directory, which
is a file of its own: the name survives a power cut only once the directory
is fsynced too. So every change follows one recipe: write a temporary file,
fsync it, rename it over the final name, fsync the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from pathlib import Path

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def sync_data(fd: int) -> None:
    """Make the file's data, and the metadata needed to read it back, durable.

    ``fdatasync`` skips the inode's timestamps but still flushes a changed file
    size, which is all an appended log needs. macOS's ``fsync`` only reaches
    the drive's volatile cache, so there we ask for ``F_FULLFSYNC``.
    """
    if sys.platform == "darwin":
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    else:
        os.fdatasync(fd)


def sync_file(fd: int) -> None:
    """Make a file's data and all its metadata durable (before a rename)."""
    if sys.platform == "darwin":
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    else:
        os.fsync(fd)


def open_dir(path: str | Path) -> int:
    """Open a directory for ``fsync`` and ``flock``; the caller closes the fd."""
    return os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)


def sync_dir(path: str | Path) -> None:
    """Make the names in a directory (created, renamed, removed) durable."""
    fd = open_dir(path)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dir(path: Path) -> None:
    """Create ``path`` (and parents) and make each new name durable in its parent."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        sync_dir(d.parent)


def lock_dir(fd: int) -> bool:
    """Take an exclusive advisory lock on an open directory; False if another holds it.

    Two writers appending to one log would interleave records and destroy it;
    the lock makes a second ``open`` of the same directory fail instead. It is
    released when the fd is closed, including when the process dies.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """``os.write`` until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def open_for_create(path: str | Path) -> int:
    """Create a new file for writing; fails if the name exists."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o644)


def open_for_append(path: str | Path) -> int:
    """Open an existing file for writing at its end."""
    fd = os.open(path, os.O_WRONLY | _O_CLOEXEC)
    os.lseek(fd, 0, os.SEEK_END)
    return fd


def open_for_read(path: str | Path) -> int:
    return os.open(path, os.O_RDONLY | _O_CLOEXEC)


def publish(tmp_path: str | Path, final_path: str | Path, fd: int) -> None:
    """Fsync an open temporary file, rename it to its final name, fsync the directory.

    After a power cut the final name holds either the old content or the
    complete new one, never a prefix of it.
    """
    sync_file(fd)
    os.replace(tmp_path, final_path)
    sync_dir(Path(final_path).parent)


def remove_durably(path: str | Path) -> None:
    """Unlink a file and make the removal durable."""
    os.unlink(path)
    sync_dir(Path(path).parent)
