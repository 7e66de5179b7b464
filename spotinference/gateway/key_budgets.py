"""Per-key budgets (``--daily-usd``, ``--monthly-usd``) in invoice-true dollars, enforced before a
request is forwarded, across every worker of the gateways on one host.

What a key has spent in a budget period (its day, or its calendar month, in ``budget.timezone``)
is its statement under the rule of `spot cost --by key` (queries/spend_by_key.sql): the period's
invoice-true spend × the key's share of the period's tokens. That share moves with the other
keys' traffic and with idle spend, so the gateway enforces a running estimate that is never
below what a settled request can add to the statement while the bill stands still:

* ``committed``: the key's statement for the period up to the last good billing sample, read from
  the ledger by a background task in each worker (``KeyBudgets.refresh``, every second it looks
  for a new sample; the statement is recomputed only when one lands or the period changes);
* ``settled``: the tokens of the key's requests that ended since that sample (from 10 s before
  it, so a row not yet in the ledger is never missed; counting one twice only errs on the safe
  side) × the price below, kept in one-minute buckets in the shared table;
* ``reserved``: the worst case of the key's requests in flight.

A request is forwarded only if ``committed + settled + reserved + its worst case ≤ budget`` for
each budget the key has; otherwise 429 ``key_budget_exhausted`` saying when the period resets
(``Retry-After``: the seconds until the next period starts). Its worst case is reserved at once and,
when the request ends, replaced by its tokens (prompt + completion, from the engine's usage; a
stream cut short settles the tokens counted so far; counts the engine never sent add nothing, as
they add nothing to the statement) × the price. So concurrent requests cannot overshoot: each one's worst case is in the sum before the
next is judged.

* Price: the invoice-true dollars per token, the largest of: the fleet's and the request's tier's
  over the trailing 24 h up to the last good sample (queries/key_budget_prices.sql; a tier that
  served no tokens then has none), and the day's and the month's so far (their spend over their
  tokens, from the statements). Adding t tokens to a period whose bill stands still raises a key's
  statement by at most t × the period's spend per token (its share of a fixed spend grows by less
  than t over all tokens), so the period's price is the bound; the recent ones are taken when
  higher. Spend that lands later at a higher rate per token (idle hours) raises every key's
  statement at the next sample: that part is known only then, and enters ``committed``.
* Worst case in tokens: the body's length in bytes (the engine's tokenizer is not on the hot path;
  a token of text or a token id in JSON takes at least one byte, and the chat template's markers
  are fewer than the JSON's quotes and keys) + the output cap: ``max_completion_tokens`` /
  ``max_tokens`` (chat, completions, Messages) or ``max_output_tokens`` (Responses) × ``n`` (and
  × the number of prompts of a completions list), or without a cap ``DEFAULT_OUTPUT_TOKENS``; no
  output for the routes that generate none (embeddings, scores, rerank, tokenize, GETs).
  Images or audio referenced by URL are not bounded by the body's bytes: their tokens are settled
  when the request ends, but not reserved.
* No price (no billing sample yet, none within ``MAX_SAMPLE_AGE_S``, or no tokens served in the
  trailing day nor in the period): a key with a budget gets 503 ``price_unknown`` (its spend cannot be judged, so
  it is not served: the same fail-closed rule as the fleet's budget gate); keys without a budget
  are unaffected.

Shared state: ``gateway/key-budgets.bin``, a fixed table memory-mapped by every worker, each
read-modify-write of a key's slot under ``flock`` on the file (as key_limits.py). A slot holds
``BUCKETS`` one-minute buckets of settled micro-dollars and each worker's reservations in its own
column (the worker's column of key_limits.py; a dead worker's reservations are dropped when its
column is taken again, or when a refusal finds its lock free). On several hosts each host has its
own table: reservations and settlements are per host, the committed statement is the ledger's.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import mmap
import os
import struct
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, time as dtime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ..key_settings import KeySettings
from ..keys import KeyRing
from ..reports import query_text
from ..store import Store
from .endpoints import Usage
from .errors import GatewayError
from .requests import ClientRequest
from .worker_columns import slot_offset, worker_is_dead

log = logging.getLogger(__name__)

MAX_WORKERS = 32  # as key_limits.MAX_WORKERS: the same worker columns
SLOTS = 4096  # keys with budgets per host
BUCKETS = 64  # minutes of settlements kept: the ledger's statement must be fresher than this
MAX_SAMPLE_AGE_S = 50 * 60  # older than this, settlements since it may have left the buckets
SAMPLE_MARGIN_S = 10.0  # settlements counted from this long before the last sample
PRICE_WINDOW = timedelta(hours=24)
DEFAULT_OUTPUT_TOKENS = 131072  # the output cap assumed when a request names none
_MAGIC = b"SPOTKB01"
_HEADER = 64
_SLOT = struct.Struct("<32s" + "qd" * BUCKETS + "d" * MAX_WORKERS)
_BUCKET = struct.Struct("<qd")  # one bucket: its minute, its settled micro-dollars
_RESERVED = struct.Struct("<d")  # one worker's reservations
_BUCKETS_AT = 32
_RESERVED_AT = 32 + _BUCKET.size * BUCKETS
_FILE_BYTES = _HEADER + SLOTS * _SLOT.size
_OUTPUT_CAPS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


class BudgetExhausted(GatewayError):
    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(429, message, code="key_budget_exhausted", retry_after_s=retry_after_s)


@dataclass(frozen=True)
class Period:
    name: str  # "daily" | "monthly"
    start: datetime
    end: datetime


def periods(now: datetime, zone: str) -> tuple[Period, Period]:
    """The day and the calendar month containing ``now``, in ``zone``."""
    tz = ZoneInfo(zone)
    today = now.astimezone(tz).date()
    day = datetime.combine(today, dtime(0), tzinfo=tz)
    month = day.replace(day=1)
    next_month = (month + timedelta(days=32)).replace(day=1)
    utc = lambda d: d.astimezone(UTC)  # noqa: E731
    return (Period("daily", utc(day), utc(datetime.combine(today + timedelta(days=1), dtime(0), tzinfo=tz))),
            Period("monthly", utc(month), utc(next_month)))


@dataclass(frozen=True)
class View:
    """What the ledger said at the last refresh: the sample, the prices, the statements."""

    sample_at: float | None = None  # unix time of the last good billing sample
    day: Period | None = None
    month: Period | None = None
    fleet_price: float | None = None  # micro-dollars per token
    tier_prices: dict[str, float] = field(default_factory=dict)
    day_micro: dict[str, int] = field(default_factory=dict)  # key_id → statement, micro-dollars
    month_micro: dict[str, int] = field(default_factory=dict)

    period_price: float | None = None  # the day's and the month's spend per token so far, the larger

    def price(self, tier: str | None) -> float | None:
        known = [p for p in (self.fleet_price, self.period_price, self.tier_prices.get(tier or "")) if p is not None]
        return max(known) if known else None


@dataclass
class Reservation:
    offset: int
    worst_micro: float
    price: float  # micro-dollars per token

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        """What the request settles at, in micro-dollars: its tokens × the price it was admitted at."""
        # Unknown counts (a stream cut before any usage) add nothing, as in the statement.
        return ((prompt_tokens or 0) + (completion_tokens or 0)) * self.price


class KeyBudgets:
    def __init__(self, keys: KeyRing, store: Store, directory: Path, timezone: str = "UTC") -> None:
        self.keys = keys
        self.store = store
        self.directory = directory
        self.timezone = timezone
        self.view = View()
        self.worker = -1
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        self._offsets: dict[str, int] = {}
        self._periods: tuple[float, Period, Period] | None = None  # (valid until, day, month)

    # -- the request's side ------------------------------------------------------------------

    def reserve(self, key_id: str, settings: KeySettings, request: ClientRequest | None,
                tier: str | None) -> Reservation:
        """Reserve the request's worst case against the key's budgets; BudgetExhausted past them."""
        now = time.time()
        view = self.view
        price = view.price(tier)
        if price is None or view.sample_at is None or now - view.sample_at > MAX_SAMPLE_AGE_S:
            raise GatewayError(503, _unknown_why(view, now), code="price_unknown", retry_after_s=30)
        worst_tokens = 0 if request is None else worst_case_tokens(request.upstream_body, generates(request))
        worst = worst_tokens * price
        day, month = self._current_periods(now)
        checks = []
        if settings.daily_usd is not None:
            committed = view.day_micro.get(key_id, 0) if view.day == day else 0
            checks.append((day, settings.daily_usd, committed))
        if settings.monthly_usd is not None:
            committed = view.month_micro.get(key_id, 0) if view.month == month else 0
            checks.append((month, settings.monthly_usd, committed))
        offset = self._offset(key_id)
        mapped = self._map
        assert mapped is not None and self._fd is not None
        now_minute = int(now // 60)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            slot = list(_SLOT.unpack_from(mapped, offset))
            reserved_cols = slot[1 + 2 * BUCKETS:]
            refused = self._refusal(slot, checks, view, worst, now_minute)
            if refused is not None and any(reserved_cols[w] for w in range(MAX_WORKERS) if w != self.worker):
                self._reap_dead_workers(mapped, reserved_cols)  # a dead worker's reservations are not in flight
                slot[1 + 2 * BUCKETS:] = reserved_cols  # (their columns are zeroed in the table too)
                refused = self._refusal(slot, checks, view, worst, now_minute)
            if refused is None:
                _RESERVED.pack_into(mapped, offset + _RESERVED_AT + 8 * self.worker, reserved_cols[self.worker] + worst)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        if refused is not None:
            raise refused
        return Reservation(offset, worst, price)

    def _refusal(self, slot: list[Any], checks: list[tuple[Period, Decimal, int]], view: View, worst: float,
                 now_minute: int) -> BudgetExhausted | None:
        reserved = sum(slot[1 + 2 * BUCKETS:])
        sample_minute = int(((view.sample_at or 0) - SAMPLE_MARGIN_S) // 60)
        buckets = list(zip(slot[1:1 + 2 * BUCKETS:2], slot[2:2 + 2 * BUCKETS:2]))
        for period, budget, committed in checks:
            since = max(sample_minute, int(period.start.timestamp() // 60))
            settled = sum(micro for minute, micro in buckets if since <= minute <= now_minute)
            spent = committed + settled
            if spent + reserved + worst > float(budget) * 1e6:
                resets = period.end.astimezone(ZoneInfo(self.timezone))
                wait_s = max(1, math.ceil(period.end.timestamp() - time.time()))
                return BudgetExhausted(
                    f"this API key's {period.name} budget of ${budget} is exhausted: ${_usd(spent)} spent and "
                    f"${_usd(reserved)} reserved by requests in flight, and this request may cost up to "
                    f"${_usd(worst)} (set max_tokens to reserve less); it resets at {resets.isoformat()}", wait_s)
        return None

    def settle(self, reservation: Reservation, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        """The request is over: its reservation becomes its tokens × the price it was admitted at."""
        cost = reservation.cost(prompt_tokens, completion_tokens)
        mapped = self._map
        assert mapped is not None and self._fd is not None
        now_minute = int(time.time() // 60)
        bucket = now_minute % BUCKETS
        bucket_at = reservation.offset + _BUCKETS_AT + _BUCKET.size * bucket
        column_at = reservation.offset + _RESERVED_AT + 8 * self.worker
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            minute, settled = _BUCKET.unpack_from(mapped, bucket_at)
            _BUCKET.pack_into(mapped, bucket_at, now_minute, (settled if minute == now_minute else 0.0) + cost)
            (reserved,) = _RESERVED.unpack_from(mapped, column_at)
            _RESERVED.pack_into(mapped, column_at, max(0.0, reserved - reservation.worst_micro))
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def release(self, reservation: Reservation) -> None:
        """Drop a reservation whose request was not forwarded after all."""
        self.settle(reservation, 0, 0)

    def _current_periods(self, now: float) -> tuple[Period, Period]:
        cached = self._periods
        if cached is None or now >= cached[0]:
            day, month = periods(datetime.fromtimestamp(now, UTC), self.timezone)
            cached = self._periods = (day.end.timestamp(), day, month)
        return cached[1], cached[2]

    # -- the ledger's side (a background task) ----------------------------------------------

    def wanted(self) -> bool:
        return any(s.daily_usd is not None or s.monthly_usd is not None for s in self.keys.settings.values())

    def refresh(self, now: datetime | None = None) -> None:
        """Read the last good sample and, when it or the period changed, the prices and statements."""
        now = now or datetime.now(UTC)
        day, month = periods(now, self.timezone)
        with self.store.reading() as con:
            (sample_at,) = con.execute("SELECT max(finished_at) FROM sample_runs WHERE ok").fetchone()
            if sample_at is None:
                self.view = View()
                return
            sample_unix = sample_at.timestamp()
            if self.view.sample_at == sample_unix and self.view.day == day:
                return
            prices = con.execute(query_text("key_budget_prices"),
                                 {"window_start": sample_at - PRICE_WINDOW, "window_end": sample_at}).fetchall()
            statements, rates = {}, []
            for period in (day, month):
                rows = [] if sample_at <= period.start else con.execute(
                    query_text("spend_by_key"), {"window_start": period.start, "window_end": sample_at}).fetchall()
                statements[period] = {row[0]: int(round(row[6] * 1000000)) for row in rows if row[0] is not None}
                tokens = sum((row[3] or 0) + (row[4] or 0) for row in rows)
                if tokens:
                    rates.append(float(sum(row[6] for row in rows)) * 1e6 / tokens)
        fleet = next((row[3] for row in prices if row[0] is None), None)
        tiers = {row[0]: row[3] for row in prices if row[0] is not None and row[3] is not None}
        self.view = View(sample_unix, day, month, fleet, tiers, statements[day], statements[month],
                         max(rates) if rates else None)

    # -- the table ---------------------------------------------------------------------------

    def open(self, worker: int) -> None:
        """Map the table (in each worker, once it has its column of key_limits.py)."""
        if self._map is not None:
            return
        self.worker = worker
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "key-budgets.bin", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_size != _FILE_BYTES or os.pread(fd, len(_MAGIC), 0) != _MAGIC:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, _FILE_BYTES)
                os.pwrite(fd, _MAGIC, 0)
            self._map = mmap.mmap(fd, _FILE_BYTES)
            self._fd = fd
            self._zero_column(self._map, worker)  # what a dead worker left in this column
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _offset(self, key_id: str) -> int:
        found = self._offsets.get(key_id)
        if found is not None:
            return found
        mapped = self._map
        assert mapped is not None and self._fd is not None
        offset = slot_offset(mapped, self._fd, key_id, slots=SLOTS, header=_HEADER, slot_bytes=_SLOT.size,
                             claim=_claim_slot, table="key budgets")
        self._offsets[key_id] = offset
        return offset

    def _reap_dead_workers(self, mapped: mmap.mmap, reserved: list[float]) -> None:
        """Zero the columns of workers that died (their key_limits lock can be taken); under the table lock."""
        for worker, amount in enumerate(reserved):
            if amount != 0 and worker != self.worker and worker_is_dead(self.directory, worker):
                self._zero_column(mapped, worker)
                reserved[worker] = 0.0

    @staticmethod
    def _zero_column(mapped: mmap.mmap, worker: int) -> None:
        column = _RESERVED_AT + 8 * worker
        for slot in range(SLOTS):
            at = _HEADER + slot * _SLOT.size + column
            if mapped[at:at + 8] != b"\0" * 8:
                mapped[at:at + 8] = b"\0" * 8


def generates(request: ClientRequest) -> bool:
    """Whether the engine may generate tokens for it: not for embeddings, scores, tokenizing, GETs."""
    spec = getattr(request, "spec", None)  # the other endpoints' (endpoint_requests.EndpointRequest)
    return spec is None or spec.usage not in (Usage.NONE, Usage.POOLING)


def worst_case_tokens(body: bytes, generates: bool = True) -> int:
    """An upper bound on the request's prompt + output tokens (see the module's docstring)."""
    if not generates:
        return len(body)
    output = DEFAULT_OUTPUT_TOKENS
    try:
        payload = json.loads(body) if body[:1] == b"{" else None
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        caps = [payload[name] for name in _OUTPUT_CAPS if _whole(payload.get(name))]
        if caps:
            output = max(caps)
        choices = max(_whole(payload.get("n")) or 1, _whole(payload.get("best_of")) or 1)
        prompt = payload.get("prompt")
        prompts = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
        output *= choices * prompts
    return len(body) + output


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _usd(micro: float) -> str:
    return f"{micro / 1e6:.6f}".rstrip("0").rstrip(".") if micro else "0"


def _unknown_why(view: View, now: float) -> str:
    if view.sample_at is None:
        why = "no good billing sample has been recorded yet"
    elif now - view.sample_at > MAX_SAMPLE_AGE_S:
        why = f"the last good billing sample is {now - view.sample_at:.0f} s old"
    else:
        why = "no tokens were served in the day before the last billing sample"
    return (f"this API key has a budget, and its spend cannot be judged: {why}, so the invoice-true price "
            "of a token is unknown (is `spot sample` running?)")


def _claim_slot(mapped: mmap.mmap, offset: int, name: bytes) -> None:
    mapped[offset:offset + len(name)] = name  # the rest of a new slot is already zero
