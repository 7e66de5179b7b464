"""A flusher in a process of its own:
``python -m spotinference.store.flush_loop HOME INTERVAL_S [PARENT_PID [CATALOG DATA_PATH]]``.

With CATALOG and DATA_PATH it flushes into that DuckLake; the catalog's password is the first
line of stdin (``flush_process.py`` writes it there, so it is never in argv, the environment or a file).

The gateway spools rows and seals segments on its event loop (cheap system calls), but copying
them into DuckDB takes tens of milliseconds of CPU a round, and in a thread of the gateway that
work would hold the GIL against the relay. This process does it instead, and stops by itself
when the process that started it is gone.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import duckdb

from ..errors import SpotError
from .database import Store
from .lake import LakeTarget

log = logging.getLogger("spotinference.flush_loop")


def run(home: Path, interval_s: float, parent_pid: int, lake: LakeTarget | None = None) -> None:
    store = Store(home, lake=lake)
    while os.getppid() == parent_pid:
        _flush_once(store)
        time.sleep(interval_s)
    _flush_once(store)  # the parent is gone: copy what it left


def _flush_once(store: Store) -> None:
    # Whatever the store raises, the rows stay spooled and this loop lives on: a flusher that died
    # of one catalog outage would leave its gateway spooling, and the lake stale, until a restart.
    try:
        store.flush()
    except SpotError as exc:  # busy, unreachable or unloadable
        log.warning("spool flush deferred: %s", exc.message)
    except duckdb.Error as exc:
        log.warning("spool flush deferred: %s: %s", type(exc).__name__, " ".join(str(exc).split()))


def main() -> None:
    # Background work with no deadline but "soon": at the lowest priority it runs on CPU time
    # the relay does not want. Each round opens DuckDB and copies the segments (~60 ms of CPU a
    # second at 100 requests/s), and at equal priority it competed with the relay in bursts.
    os.nice(19)
    home, interval_s = Path(sys.argv[1]), float(sys.argv[2])
    parent_pid = int(sys.argv[3]) if len(sys.argv) > 3 else os.getppid()
    lake = None
    if len(sys.argv) > 5:
        password = sys.stdin.readline().rstrip("\n")
        lake = LakeTarget(sys.argv[4], Path(sys.argv[5]), password or None)
    try:
        run(home, interval_s, parent_pid, lake)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
