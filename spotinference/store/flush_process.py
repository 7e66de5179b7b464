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
        lake = self.store.lake
        argv = [*python_module("spotinference.store.flush_loop"), str(self.store.home),
                str(self.interval_s), str(os.getpid())]
        if lake is None:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
            return
        # The lake's catalog password travels through a pipe: never argv, the environment or a file.
        self._proc = subprocess.Popen([*argv, lake.catalog, str(lake.data_path)], stdin=subprocess.PIPE)
        assert self._proc.stdin is not None
        self._proc.stdin.write((lake.password or "").encode() + b"\n")
        self._proc.stdin.close()

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
