"""Per-key rate, token and concurrency limits (``--rpm``, ``--tpm``, ``--max-concurrent``), shared by
every worker of the gateways on one host; and the entry to per-key budgets (key_budgets.py), which
use this table's worker columns: ``admit`` reserves a request's worst case before its rate limits,
``settle`` replaces it by the request's tokens.

Shared state: a fixed table in a memory-mapped file in the data directory
(``gateway/key-limits.bin``), each read-modify-write of a key's slot under ``flock`` on that
file. A request costs two such updates (admit, settle): measured 8 µs at P50 (10 µs P99) in one
process, 8 µs P50 / 71 µs P99 with two processes hammering the same key at once, against a
hot-path budget of ~0.1 ms (``python -m tests.benchmarks.key_limits``). Not chosen: SQLite
(a write transaction per update, tens of microseconds and a busy timeout under contention),
DuckDB (one writing process at a time), counters per worker (they do not hold with
``gateway.workers > 1``).

What is counted, per key:

* requests and tokens: token buckets that start full (rpm, tpm) and refill continuously at
  rpm/60 and tpm/60 per second, as OpenAI's limits do (``x-ratelimit-reset-*``: the time until
  the bucket is full again). A request is admitted while a whole request is left and the token
  bucket is above zero; its tokens (prompt + completion, from the engine's usage) are taken when
  it settles, so only the requests in flight can pass the token limit (by one request when they
  come one at a time). Tokens the engine did not report (unknown usage) count as none.
* concurrency: in-flight counts per worker in the key's slot. Each worker holds an ``flock`` on
  ``gateway/key-limits.worker-N`` for its column N; a worker that dies (kill -9) leaves its count
  behind, so a refusal for concurrency first takes the locks of the other columns: one it can
  take is a dead worker's, whose counts are zeroed.

On several hosts each host has its own table: limits are per host there, not global.
"""

from __future__ import annotations

import fcntl
import logging
import math
import mmap
import os
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..keys import KeyRing
from .errors import GatewayError
from .key_budgets import KeyBudgets, Reservation
from .requests import ClientRequest
from .worker_columns import slot_offset, worker_is_dead, worker_lock_path

log = logging.getLogger(__name__)

MAX_WORKERS = 32
SLOTS = 4096  # keys with limits per host
_MAGIC = b"SPOTKL01"
_HEADER = 64
_SLOT = struct.Struct(f"<32s4d{MAX_WORKERS}i")  # key id, request level+time, token level+time, in flight
_FILE_BYTES = _HEADER + SLOTS * _SLOT.size
_FULL = math.nan  # a bucket not used yet: full at whatever its limit is now

Send = Callable[[dict[str, Any]], Awaitable[None]]


class RateLimited(GatewayError):
    """429 ``rate_limit_exceeded``, with Retry-After and the x-ratelimit-* headers."""

    def __init__(self, message: str, retry_after_s: int, limit_headers: list[tuple[bytes, bytes]],
                 limit: str = "rpm") -> None:
        super().__init__(429, message, code="rate_limit_exceeded", retry_after_s=retry_after_s)
        self.limit_headers = limit_headers
        self.limit = limit  # "rpm" | "tpm" | "concurrency": which one refused (the key's statement counts them)

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [*super().headers(), *self.limit_headers]


@dataclass
class Ticket:
    """An admitted request's place in its key's slot, and the headers its answer carries."""

    offset: int  # -1: the key has a budget but no rate limits
    headers: list[tuple[bytes, bytes]]
    settled: bool = False
    reservation: Reservation | None = None  # its worst case against the key's budgets (key_budgets.py)

    def wrap(self, send: Send) -> Send:
        """``send`` with the x-ratelimit-* headers added to the response's start."""
        headers = self.headers

        def send_with_limits(message: dict[str, Any]) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *headers]}
            return send(message)

        return send_with_limits


class KeyLimits:
    def __init__(self, keys: KeyRing, directory: Path, budgets: KeyBudgets | None = None) -> None:
        self.keys = keys
        self.budgets = budgets  # per-key budgets, sharing this table's worker columns
        self.directory = directory
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        self._worker_fd: int | None = None
        self.worker = -1
        self._offsets: dict[str, int] = {}

    # -- the request's side ------------------------------------------------------------------

    def admit(self, key_id: str | None, request: ClientRequest | None = None, tier: str | None = None) -> Ticket | None:
        """Count a request against its key's limits and reserve its worst case against its budgets
        (``request``: as read, ``tier``: the tier it is routed to); None if the key has neither;
        BudgetExhausted or RateLimited past them."""
        settings = self.keys.settings.get(key_id) if key_id is not None else None
        if settings is None:
            return None
        assert key_id is not None
        reservation = None
        if self.budgets is not None and (settings.daily_usd is not None or settings.monthly_usd is not None):
            if self._map is None:
                self.open()
            reservation = self.budgets.reserve(key_id, settings, request, tier)
        if settings.rpm is None and settings.tpm is None and settings.max_concurrent is None:
            return None if reservation is None else Ticket(-1, [], reservation=reservation)
        try:
            ticket = self._admit(key_id, settings.rpm, settings.tpm, settings.max_concurrent)
        except BaseException:
            if reservation is not None:
                self.budgets.release(reservation)  # type: ignore[union-attr]
            raise
        ticket.reservation = reservation
        return ticket

    def _admit(self, key_id: str, rpm: int | None, tpm: int | None, most: int | None) -> Ticket:
        offset = self._offset(key_id)
        mapped = self._map
        assert mapped is not None and self._fd is not None
        now = time.time()
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            key, req, req_at, tok, tok_at, *flight = _SLOT.unpack_from(mapped, offset)
            req = _refill(req, req_at, rpm, now)
            tok = _refill(tok, tok_at, tpm, now)
            refused = None
            if rpm is not None and req < 1:
                refused = (f"this API key's limit of {_count(rpm, 'request')} per minute is reached",
                           (1 - req) * 60 / rpm, "rpm")
            elif tpm is not None and tok <= 0:
                refused = (f"this API key's limit of {_count(tpm, 'token')} per minute is reached",
                           (1 - tok) * 60 / tpm, "tpm")
            elif most is not None and sum(flight) >= most:
                flight = self._reap_dead_workers(mapped, flight)
                if sum(flight) >= most:
                    refused = (f"this API key's limit of {_count(most, 'request')} at once is reached", 1.0, "concurrency")
            if refused is None:
                req -= 1
                flight[self.worker] += 1
            _SLOT.pack_into(mapped, offset, key, req, now, tok, now, *flight)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        headers = _headers(rpm, req, tpm, tok)
        if refused is not None:
            message, wait_s, limit = refused
            raise RateLimited(f"{message}: retry after {_duration(wait_s)}", max(1, math.ceil(wait_s)), headers, limit)
        return Ticket(offset, headers)

    def settle(self, ticket: Ticket, key_id: str | None, prompt_tokens: int | None,
               completion_tokens: int | None) -> None:
        """The request is over: free its place and take its tokens from the key's bucket."""
        if ticket.settled:
            return
        ticket.settled = True
        try:
            if ticket.reservation is not None:
                self.budgets.settle(ticket.reservation, prompt_tokens, completion_tokens)  # type: ignore[union-attr]
            if ticket.offset >= 0:
                self._settle(ticket, key_id, (prompt_tokens or 0) + (completion_tokens or 0))
        except Exception:  # noqa: BLE001 - the answer and its usage row matter more than the count
            log.exception("the key limits could not be settled for %s", key_id)

    def _settle(self, ticket: Ticket, key_id: str | None, tokens: int) -> None:
        settings = self.keys.settings.get(key_id) if key_id is not None else None
        tpm = settings.tpm if settings is not None else None
        mapped = self._map
        assert mapped is not None and self._fd is not None
        now = time.time()
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            key, req, req_at, tok, tok_at, *flight = _SLOT.unpack_from(mapped, ticket.offset)
            if tpm is not None:
                tok, tok_at = _refill(tok, tok_at, tpm, now) - tokens, now
            flight[self.worker] = max(0, flight[self.worker] - 1)
            _SLOT.pack_into(mapped, ticket.offset, key, req, req_at, tok, tok_at, *flight)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    # -- the table ---------------------------------------------------------------------------

    def open(self) -> None:
        """Map the table and take a worker column (in each worker, after it started)."""
        if self._map is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "key-limits.bin", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_size != _FILE_BYTES or os.pread(fd, len(_MAGIC), 0) != _MAGIC:
                os.ftruncate(fd, 0)  # new, or another layout: start empty (buckets start full)
                os.ftruncate(fd, _FILE_BYTES)
                os.pwrite(fd, _MAGIC, 0)
            self._map = mmap.mmap(fd, _FILE_BYTES)
            self._fd = fd
            self.worker, self._worker_fd = self._take_column()
            self._zero_column(self._map, self.worker)  # what a dead worker left in this column
            if self.budgets is not None:
                self.budgets.open(self.worker)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self.budgets is not None:
            self.budgets.close()
        if self._map is not None:
            self._map.close()
            self._map = None
        for fd in (self._fd, self._worker_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._worker_fd = None

    def _take_column(self) -> tuple[int, int]:
        for worker in range(MAX_WORKERS):
            fd = os.open(worker_lock_path(self.directory, worker), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return worker, fd
        raise RuntimeError(f"more than {MAX_WORKERS} gateway workers on this host share {self.directory}")

    def _offset(self, key_id: str) -> int:
        found = self._offsets.get(key_id)
        if found is not None:
            return found
        if self._map is None:
            self.open()
        mapped = self._map
        assert mapped is not None and self._fd is not None
        offset = slot_offset(mapped, self._fd, key_id, slots=SLOTS, header=_HEADER, slot_bytes=_SLOT.size,
                             claim=_claim_slot, table="key limits")
        self._offsets[key_id] = offset
        return offset

    def _reap_dead_workers(self, mapped: mmap.mmap, flight: list[int]) -> list[int]:
        """Zero the columns of workers that died (their lock can be taken); called under the table lock."""
        for worker, count in enumerate(flight):
            if count != 0 and worker != self.worker and worker_is_dead(self.directory, worker):
                self._zero_column(mapped, worker)
                flight[worker] = 0
        return flight

    @staticmethod
    def _zero_column(mapped: mmap.mmap, worker: int) -> None:
        column = 32 + 4 * 8 + 4 * worker
        for slot in range(SLOTS):
            at = _HEADER + slot * _SLOT.size + column
            if mapped[at:at + 4] != b"\0\0\0\0":
                mapped[at:at + 4] = b"\0\0\0\0"


def _refill(level: float, at: float, limit: int | None, now: float) -> float:
    if limit is None:
        return level  # not limited now: kept as it is (full, if never used) for when it is again
    if math.isnan(level):
        return float(limit)
    return min(float(limit), level + max(0.0, now - at) * limit / 60)


def _headers(rpm: int | None, req: float, tpm: int | None, tok: float) -> list[tuple[bytes, bytes]]:
    headers = []
    if rpm is not None:
        headers += [(b"x-ratelimit-limit-requests", b"%d" % rpm),
                    (b"x-ratelimit-remaining-requests", b"%d" % max(0, math.floor(req))),
                    (b"x-ratelimit-reset-requests", _duration((rpm - req) * 60 / rpm).encode())]
    if tpm is not None:
        headers += [(b"x-ratelimit-limit-tokens", b"%d" % tpm),
                    (b"x-ratelimit-remaining-tokens", b"%d" % max(0, math.floor(tok))),
                    (b"x-ratelimit-reset-tokens", _duration((tpm - tok) * 60 / tpm).encode())]
    return headers


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _duration(seconds: float) -> str:
    """Go's duration format, as OpenAI writes its reset headers: 20ms, 1.5s, 6m0s."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    return f"{int(minutes)}m{rest:g}s" if minutes else f"{rest:g}s"


def _claim_slot(mapped: mmap.mmap, offset: int, name: bytes) -> None:
    # Full buckets to start with: a new key may spend its whole burst at once.
    _SLOT.pack_into(mapped, offset, name, _FULL, 0.0, _FULL, 0.0, *([0] * MAX_WORKERS))
