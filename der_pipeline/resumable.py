"""Long resumable jobs (generate, the confidence pass): buffered rows flushed to a shard store.

Rows are flushed every ``every_s`` seconds, on ``flush()``, and on leaving the block
however it is left (a finished run, an error, Ctrl-C or SIGTERM, which is turned into
KeyboardInterrupt), so a crash loses at most the rows of the last few seconds and a
rerun skips everything already stored.
"""
from __future__ import annotations

import signal
import threading
import time

from der_pipeline.tree_store import TreeStore


class Stopped(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


def _raise_stopped(signum, frame):
    raise Stopped(f"signal {signum}")


class BufferedWriter:
    def __init__(self, store: TreeStore, every_s: float = 20.0):
        self.store, self.every_s = store, every_s
        self.rows: list[dict] = []
        self.written = 0
        self._last = time.monotonic()
        self._old_handler = None

    def __enter__(self) -> BufferedWriter:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self._old_handler = signal.signal(signal.SIGTERM, _raise_stopped)
        return self

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if time.monotonic() - self._last > self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.store.append(self.rows)
            self.written += len(self.rows)
            self.rows = []
        self._last = time.monotonic()

    def __exit__(self, *exc) -> None:
        try:
            self.flush()
        finally:
            if self._old_handler is not None:
                signal.signal(signal.SIGTERM, self._old_handler)
