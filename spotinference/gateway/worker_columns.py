"""Which worker owns a column of the shared key tables, and whether it is still alive.

Each gateway worker holds an ``flock`` on ``key-limits.worker-N`` for the column N it writes in
the key-limits and key-budgets tables. A lock that can be taken means its holder has exited (the
kernel releases an flock with the process), so whatever that column still counts can be given back.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def worker_lock_path(directory: Path, worker: int) -> Path:
    return directory / f"key-limits.worker-{worker}"


def worker_is_dead(directory: Path, worker: int) -> bool:
    """True when worker column ``worker``'s lock can be taken: its holder has exited (or never was)."""
    try:
        fd = os.open(worker_lock_path(directory, worker), os.O_RDWR)
    except FileNotFoundError:
        return False  # never taken: nothing of its to give back
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        return True  # closing the descriptor below lets the lock go again
    finally:
        os.close(fd)
