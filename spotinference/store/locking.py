"""Cross-process access to the database file: many readers or one writer, fairly, with a deadline.

DuckDB lets one process hold a database file open for writing and refuses every other opener
while it does. Rather than race DuckDB's own lock and parse its errors, every spot process takes
an advisory ``flock`` on a sibling lock file first, and holds it only for one short transaction.

Fairness comes from a turnstile: readers and writers both pass through an exclusive turnstile
lock before taking the database lock (shared for readers, exclusive for writers). A writer that is
waiting for readers to finish keeps the turnstile, so a stream of readers cannot starve it.

flock locks belong to an open file description, so two threads of one process that each open the
lock file exclude each other exactly as two processes do; the kernel drops a dead process's
locks, so a kill -9 never leaves the database locked.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StoreBusyError

# Polling (not a blocking flock) keeps the deadline exact; the first waits are short because the
# usual holder is one small transaction of a few milliseconds.
_FIRST_POLL_S = 0.0005
_MAX_POLL_S = 0.005


@dataclass
class LockStats:
    """How long this process has waited for the database, for benchmarks and `spot doctor`."""

    acquisitions: int = 0
    total_wait_s: float = 0.0
    max_wait_s: float = 0.0
    waits_s: list[float] = field(default_factory=list)

    def record(self, wait_s: float) -> None:
        self.acquisitions += 1
        self.total_wait_s += wait_s
        self.max_wait_s = max(self.max_wait_s, wait_s)
        if len(self.waits_s) < 100_000:
            self.waits_s.append(wait_s)


class DatabaseLock:
    def __init__(
        self,
        database_path: Path,
        *,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.lock_path = database_path.with_name(database_path.name + ".lock")
        self.turnstile_path = database_path.with_name(database_path.name + ".turnstile")
        self.timeout_s = timeout_s
        self.stats = LockStats()
        self._clock = clock
        self._sleep = sleep

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._hold(exclusive=False):
            yield

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._hold(exclusive=True):
            yield

    @contextmanager
    def _hold(self, *, exclusive: bool) -> Iterator[None]:
        started = self._clock()
        deadline = started + self.timeout_s
        turnstile = self._open(self.turnstile_path)
        lock = self._open(self.lock_path)
        try:
            self._acquire(turnstile, fcntl.LOCK_EX, deadline)
            try:
                self._acquire(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, deadline)
            finally:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
            self.stats.record(self._clock() - started)
            yield
        finally:
            os.close(turnstile)
            os.close(lock)  # closing the descriptor releases its lock

    def _open(self, path: Path) -> int:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _acquire(self, fd: int, mode: int, deadline: float) -> None:
        poll_s = _FIRST_POLL_S
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if self._clock() >= deadline:
                    raise StoreBusyError(
                        f"the database {self.lock_path.with_suffix('')} stayed busy for "
                        f"{self.timeout_s:g} s (another spot process holds it)",
                        hint="retry; if it persists, look for a stuck spot process with `ps`",
                    ) from None
                self._sleep(poll_s)
                poll_s = min(poll_s * 2, _MAX_POLL_S)
