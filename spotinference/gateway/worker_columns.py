"""The shared key tables' common parts: which worker owns a column, whether it is still alive,
and where a key's slot is.

Each gateway worker holds an ``flock`` on ``key-limits.worker-N`` for the column N it writes in
the key-limits and key-budgets tables. A lock that can be taken means its holder has exited (the
kernel releases an flock with the process), so whatever that column still counts can be given back.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import zlib
from collections.abc import Callable
from pathlib import Path

KEY_BYTES = 32  # a slot starts with its key id, NUL-padded


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


def slot_offset(mapped: mmap.mmap, fd: int, key_id: str, *, slots: int, header: int, slot_bytes: int,
                claim: Callable[[mmap.mmap, int, bytes], None], table: str) -> int:
    """The byte offset of ``key_id``'s slot in a table of ``slots`` fixed-size slots after a
    ``header``, found by linear probing from the key's CRC; a free slot is claimed with ``claim``
    (which writes the key and its starting values). Under an flock on ``fd``, so workers that
    meet the same new key at once agree on one slot."""
    name = key_id.encode()[:KEY_BYTES].ljust(KEY_BYTES, b"\0")
    start = zlib.crc32(name) % slots
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        for probe in range(slots):
            offset = header + ((start + probe) % slots) * slot_bytes
            stored = mapped[offset:offset + KEY_BYTES]
            if stored == name:
                return offset
            if stored == b"\0" * KEY_BYTES:
                claim(mapped, offset, name)
                return offset
        raise RuntimeError(f"the {table} table is full ({slots} keys)")
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
