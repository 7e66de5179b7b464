"""Append-only spool files: how a busy writer records rows without ever waiting on the database.

A writer (the gateway, one row per request) appends each row as one JSON line with a single
``write(2)`` to a segment file it holds an exclusive ``flock`` on. When the write returns, the row
is in the kernel's page cache: a kill -9 of the writer cannot lose it. Segments rotate after a
second or a few thousand rows; a rotated segment, or one whose writer died (the kernel dropped its
lock), is *sealed* and is copied into DuckDB by whichever process next runs ``Store.flush()``.

Segment files are named ``<table>.<writer id>.<sequence>.jsonl``. A new segment is created under a
``.new`` name, locked, then renamed, so an ingester can never see it unlocked before its writer
holds it.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

SEGMENT = re.compile(r"^(?P<table>[a-z_]+)\.(?P<writer>[A-Za-z0-9_-]+)\.(?P<seq>\d{8})\.jsonl$")


def _unsupported(value: Any) -> Any:
    raise TypeError(f"cannot store {type(value).__name__} in a spool row")


# Datetimes, dates and UUIDs are encoded natively (RFC 3339, "Z" for UTC), which read_json reads.
_encode = msgspec.json.Encoder(enc_hook=_unsupported).encode


def _printable(value: Any) -> Any:
    """A string UTF-8 cannot hold, with each such code point written as ``\\udXXX`` text."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def new_writer_id() -> str:
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:20] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class SpoolWriter:
    """Appends rows for one table. Thread-safe; one open segment at a time."""

    def __init__(
        self,
        spool_dir: Path,
        table: str,
        *,
        writer_id: str | None = None,
        rotate_after_s: float = 1.0,
        rotate_after_rows: int = 5000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not re.fullmatch(r"[a-z_]+", table):
            raise ValueError(f"spool table name {table!r}: expected lowercase letters and '_'")
        self.spool_dir = spool_dir
        self.table = table
        self.writer_id = writer_id or new_writer_id()
        self.rotate_after_s = rotate_after_s
        self.rotate_after_rows = rotate_after_rows
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._seq = 0
        self._rows_in_segment = 0
        self._opened_at = 0.0
        spool_dir.mkdir(parents=True, exist_ok=True)

    def append(self, row: Mapping[str, Any]) -> None:
        """Record one row. When this returns, the row survives the death of this process.

        ``None`` is written as JSON null (an unknown value, never a 0). A string that is not
        valid Unicode (a lone surrogate from a client's JSON ``"\\ud800"``) is written with the
        offending code points escaped, so the row is kept rather than lost."""
        try:
            line = _encode(row) + b"\n"
        except UnicodeEncodeError:
            line = _encode({k: _printable(v) for k, v in row.items()}) + b"\n"
        with self._lock:
            if self._fd is None or self._due():
                self._rotate_locked()
            assert self._fd is not None
            written = os.write(self._fd, line)
            if written != len(line):  # regular files write whole; anything else is a disk fault
                raise OSError(f"short write to spool segment ({written} of {len(line)} bytes)")
            self._rows_in_segment += 1

    def rotate_if_due(self) -> None:
        """Seal the open segment if it is old enough, so idle writers do not hide rows."""
        with self._lock:
            if self._fd is not None and self._rows_in_segment and self._due():
                self._close_locked()

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _due(self) -> bool:
        return (
            self._rows_in_segment >= self.rotate_after_rows
            or self._clock() - self._opened_at >= self.rotate_after_s
        )

    def _rotate_locked(self) -> None:
        self._close_locked()
        self._seq += 1
        name = f"{self.table}.{self.writer_id}.{self._seq:08d}.jsonl"
        staging = self.spool_dir / (name + ".new")
        fd = os.open(staging, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(staging, self.spool_dir / name)
        self._fd = fd
        self._rows_in_segment = 0
        self._opened_at = self._clock()

    def _close_locked(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock: the segment is now sealed
            self._fd = None

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class SealedSegment:
    path: Path
    table: str
    fd: int  # open, holding the segment's exclusive lock until released

    def release(self) -> None:
        os.close(self.fd)


def claim_sealed_segments(spool_dir: Path, tables: set[str]) -> list[SealedSegment]:
    """Lock and return every segment no writer holds. Live segments are left alone."""
    if not spool_dir.is_dir():
        return []
    claimed = []
    for path in sorted(spool_dir.iterdir()):
        match = SEGMENT.match(path.name)
        if not match or match["table"] not in tables:
            continue
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # another ingester took it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # its writer is alive and still appending
            continue
        claimed.append(SealedSegment(path, match["table"], fd))
    return claimed


def drop_partial_tail(segment: SealedSegment) -> int:
    """Cut bytes after the last newline: a writer killed inside write(2) never acknowledged them."""
    size = os.fstat(segment.fd).st_size
    if size == 0:
        return 0
    tail_start = max(0, size - 65536)
    while True:
        chunk = os.pread(segment.fd, size - tail_start, tail_start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            keep = tail_start + cut + 1
            break
        if tail_start == 0:
            keep = 0
            break
        tail_start = max(0, tail_start - 65536)
    if keep < size:
        os.ftruncate(segment.fd, keep)
    return size - keep
