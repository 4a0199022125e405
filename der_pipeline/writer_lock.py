"""One writer per store folder (a dataset's tree, its confidence table): an exclusive ``fcntl`` lock.

Two `generate` runs on one dataset would each make every missing node, and the second's clean-up of
half-written files could delete the first's live temp file. The writer takes ``<folder>/.writer.lock``
without waiting; a second writer exits at once, naming the holder's PID. Readers never take it (reads are
pure). The kernel drops the lock when its process dies however it dies, so a killed run never leaves a
stale lock behind; the file itself stays (git and DVC ignore it).
"""
from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".writer.lock"


class StoreBusyError(RuntimeError):
    """Another process is writing the same store."""


@contextmanager
def exclusive_writer(folder: Path, what: str) -> Iterator[None]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise StoreBusyError(f"{folder}: {what} is being written by another process (PID {holder}); wait for "
                                 f"it to finish or stop it (its finished work is kept), then rerun") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
