"""One lock per tier across every process on this machine (gateway workers, `spot wake`, cron),
held only around a decision that must not happen twice: create a VM, restore a VM.

The provider's VM state is the other half of single flight: a VM already RESTORING is never
restored again, so whoever takes the lock second sees the first one's restore and just waits.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def tier_lock(home: Path, tier: str) -> Iterator[None]:
    directory = home / "locks"
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / f"tier-{tier}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for one provider call at most: seconds
        yield
    finally:
        os.close(fd)
