"""Starts and stops the flush loop (``flush_loop.py``) beside a long-running writer."""

from __future__ import annotations

import os
import subprocess

from ..child import python_module
from .database import Store
from .spool import SpoolWriter


class SpoolFlushProcess:
    def __init__(self, store: Store, writer: SpoolWriter, *, interval_s: float = 1.0) -> None:
        self.store = store
        self.writer = writer
        self.interval_s = interval_s
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [*python_module("spotinference.store.flush_loop"), str(self.store.home),
             str(self.interval_s), str(os.getpid())],
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        """Seal the writer's segment, stop the loop, and copy what remains."""
        self.writer.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self.store.flush()
