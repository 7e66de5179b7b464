"""A flusher in a process of its own: ``python -m spotinference.store.flush_loop HOME INTERVAL_S``.

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

from ..errors import SpotError
from .database import Store

log = logging.getLogger("spotinference.flush_loop")


def run(home: Path, interval_s: float, parent_pid: int) -> None:
    store = Store(home)
    while os.getppid() == parent_pid:
        try:
            store.flush()
        except SpotError as exc:  # busy or unloadable: the rows stay spooled for the next round
            log.warning("spool flush deferred: %s", exc)
        time.sleep(interval_s)
    store.flush()  # the parent is gone: copy what it left


def main() -> None:
    # Background work with no deadline but "soon": at the lowest priority it runs on CPU time
    # the relay does not want. Each round opens DuckDB and copies the segments (~60 ms of CPU a
    # second at 100 requests/s), and at equal priority it competed with the relay in bursts.
    os.nice(19)
    home, interval_s = Path(sys.argv[1]), float(sys.argv[2])
    parent_pid = int(sys.argv[3]) if len(sys.argv) > 3 else os.getppid()
    try:
        run(home, interval_s, parent_pid)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
