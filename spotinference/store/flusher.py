"""A background thread that seals and flushes spool segments, for long-running writers."""

from __future__ import annotations

import logging
import threading

from ..errors import SpotError
from .database import FlushResult, Store
from .spool import SpoolWriter

log = logging.getLogger(__name__)


class SpoolFlusher:
    """Every ``interval_s``: seal the writers' idle segments, then copy sealed ones into DuckDB.

    It runs beside the hot path, never on it: a flush that cannot get the database this round
    (another process holds it) leaves the rows in the spool for the next round, or for any other
    process's flush.
    """

    def __init__(self, store: Store, writers: list[SpoolWriter], *, interval_s: float = 1.0) -> None:
        self.store = store
        self.writers = writers
        self.interval_s = interval_s
        self.rows_flushed = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spool-flusher", daemon=True)

    def start(self) -> SpoolFlusher:
        self._thread.start()
        return self

    def flush_now(self) -> FlushResult:
        for writer in self.writers:
            writer.rotate_if_due()
        result = self.store.flush()
        self.rows_flushed += result.rows
        return result

    def stop(self, *, final_flush: bool = True) -> None:
        """Stop the thread; seal every writer's segment and flush what remains."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if final_flush:
            for writer in self.writers:
                writer.close()
            self.rows_flushed += self.store.flush().rows

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.flush_now()
            except SpotError as exc:
                self.failures += 1
                log.warning("spool flush deferred: %s", exc)
