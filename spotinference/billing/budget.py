"""The budget gate's state: today's spend, the burn rate, and how fresh billing is.

The gateway asks ``BudgetGate.state`` before forwarding a request; the answer is a cached
``GateState`` that a background thread recomputes every ``budget.refresh_s``, so the request path
reads one attribute and never the database. ``gate_state(store, settings, now)`` is the same
computation as a pure function.

Reasons (``GateState.reason``)::

    ok                    open    fresh samples; spend and its projection are under the budget
    no_budget             open    fresh samples, no [budget] daily_usd: nothing to spend against
    gate_off              open    [budget] enforce = false: the operator turned the gate off
    billing_unobservable  closed  HTTP 503: no good sample within max_sample_age_s from every
                                  sampled account, or the last one is dated in the future (a
                                  clock fault: ``clock_fault``); with or without a budget
    budget_exhausted      closed  HTTP 429: spend >= budget, or the projection crosses it
                                  before the next sample (closes_early)

Definitions:

* Today is the calendar day of ``now`` in ``budget.timezone``; today's spend is
  ``queries/spend.sql`` over [midnight, next midnight): the sum of the increases of each
  resource's cumulative bill whose sample falls today, by the ledger's rules (migration 0008: a
  decrease counts nothing). The fleet's (``budget.scope = "fleet"``, the default) or the whole
  account's (``"account"``). The same file `spot cost` reads.
* The last good sample is the oldest of the sampled providers' latest ok runs (their
  ``finished_at``): if any provider's billing is stale, spend is unobservable.
* Burn is the sum of the current hourly rates of the active resources (in the same scope) in
  each provider's latest ok run. The sampling interval is the gap between a provider's last two ok runs (clamped to
  1 s .. max_sample_age_s; 60 s with only one run).
* Projected spend is what the next sample should show: spend + burn × (interval, or the time
  already elapsed since the last sample if longer) / 3600. Closing when it reaches the budget is
  closing early, because the bill accrues whether or not requests are refused.

It reopens by itself: a fresh sample ends ``billing_unobservable``; midnight ends
``budget_exhausted`` (today's spend starts again from the first sample after it).

Each change of the gate (open, reason, clock fault) is an event in ``gate_events`` (migration
0010), for `spot events`: ``record_gate_state`` writes it only when the state differs from the
last one recorded, in one transaction under the store's exclusive lock, so that several gateway
workers, each with its own ``BudgetGate`` seeing the same change, record it once.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from ..config import Settings
from ..errors import SpotError
from ..reports import query_text
from ..store import Store
from .runs import last_good_runs, sampled_providers

log = logging.getLogger("spotinference.billing.budget")

DEFAULT_SAMPLE_INTERVAL_S = 60.0
_HOUR = Decimal(3600)

Clock = Callable[[], datetime]
OnChange = Callable[["GateState", "GateState"], None]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class GateState:
    open: bool
    reason: str  # ok | no_budget | billing_unobservable | budget_exhausted
    spend_today_usd: Decimal | None  # None when today's spend could not be read
    burn_usd_per_hour: Decimal | None  # None without a good run
    last_good_sample_at: datetime | None
    sample_age_s: float | None
    budget_usd: Decimal | None
    closes_early: bool  # closed because the projection crosses the budget, not spend itself
    message: str
    projected_spend_usd: Decimal | None = None
    day: date | None = None  # today, in the budget's time zone
    checked_at: datetime | None = None
    retry_after_s: int | None = None  # for a closed gate: when asking again may help
    clock_fault: bool = False  # closed because a billing sample is dated in the future

    @property
    def http_status(self) -> int | None:
        """What the gateway answers while closed (None: open)."""
        if self.open:
            return None
        return 429 if self.reason == "budget_exhausted" else 503

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def change_key(self) -> tuple[bool, str, bool]:
        """What makes two states a different gate (the figures inside one state move all the time)."""
        return self.open, self.reason, self.clock_fault

    @property
    def why(self) -> str:
        """The reason in words: "over budget", "billing unobservable", "clock fault", ..."""
        if self.clock_fault:
            return "clock fault"
        return _WHY.get(self.reason, self.reason.replace("_", " "))


_WHY = {"ok": "under budget", "no_budget": "billing observed, no daily budget", "gate_off": "gate turned off",
        "billing_unobservable": "billing unobservable", "budget_exhausted": "over budget"}


@dataclass(frozen=True)
class Snapshot:
    """What the store said at ``fetched_at``: everything ``evaluate`` needs but the clock."""

    day: date
    spend_today_usd: Decimal
    burn_usd_per_hour: Decimal | None
    last_good_sample_at: datetime | None
    sample_interval_s: float
    fetched_at: datetime
    missing_providers: tuple[str, ...] = ()
    good_run_ids: tuple[str, ...] = ()  # the latest ok run of each sampled provider
    newest_good_sample_at: datetime | None = None  # the most recent of them (a future one is a clock fault)


def _day_bounds(now: datetime, zone: str) -> tuple[date, datetime, datetime]:
    tz = ZoneInfo(zone)
    today = now.astimezone(tz).date()
    start = datetime.combine(today, dtime(0), tzinfo=tz).astimezone(UTC)
    end = datetime.combine(today + timedelta(days=1), dtime(0), tzinfo=tz).astimezone(UTC)
    return today, start, end


_BURN = """
SELECT coalesce(sum(b.usd_per_hour), 0) FROM billing_samples AS b
LEFT JOIN fleet_resources AS f
    ON f.provider = b.provider AND f.resource_type = b.resource_type AND f.resource_id = b.resource_id
WHERE b.active AND b.usd_per_hour IS NOT NULL AND NOT coalesce(b.excluded, false)
  AND list_contains($runs, b.run_id) AND b.sampled_at >= $since AND ($account OR f.resource_id IS NOT NULL)
"""
# A sample this far past the gate's clock is a clock fault, not a fresh sample.
FUTURE_TOLERANCE_S = 10.0


def read_snapshot(store: Store, settings: Settings, now: datetime, previous: Snapshot | None = None) -> Snapshot:
    """Read today's spend, the burn rate and the freshness of billing from the store.

    Spend only changes when a sampler run succeeds: given the ``previous`` snapshot of the same
    day with the same latest ok runs, its spend and burn are reused and only the (cheap) run
    lookup touches the store.
    """
    today, start, end = _day_bounds(now, settings.budget.timezone)
    providers = sampled_providers(settings)
    with store.reading() as con:
        runs = last_good_runs(con, providers)
        run_ids = tuple(runs[p].run_id for p in sorted(runs))
        if previous is not None and previous.day == today and previous.good_run_ids == run_ids:
            spend, burn = previous.spend_today_usd, previous.burn_usd_per_hour
        else:
            account = settings.budget.scope == "account"
            row = con.execute(query_text("spend"), {"window_start": start, "window_end": end}).fetchone()
            figure = None if row is None else (row[2] if account else row[0])
            spend = figure if figure is not None else Decimal(0)
            burn = None
            if runs:
                (burn,) = con.execute(_BURN, {"runs": list(run_ids), "account": account,
                                              "since": min(r.started_at for r in runs.values())}).fetchone()
    missing = tuple(p for p in providers if p not in runs)
    last_good = None if missing or not runs else min(r.finished_at for r in runs.values())
    gaps = [(r.started_at - r.previous_started_at).total_seconds() for r in runs.values() if r.previous_started_at]
    interval = max(gaps) if gaps else DEFAULT_SAMPLE_INTERVAL_S
    interval = min(max(interval, 1.0), float(settings.budget.max_sample_age_s))
    newest = max((r.finished_at for r in runs.values()), default=None)
    return Snapshot(today, Decimal(spend), None if burn is None else Decimal(burn), last_good, interval, now,
                    missing, run_ids, newest)


def evaluate(snapshot: Snapshot | None, settings: Settings, now: datetime, *, error: str | None = None) -> GateState:
    """The gate's state at ``now`` from what the store said (``snapshot``, None if never read)."""
    budget_cfg = settings.budget
    budget = budget_cfg.daily_usd
    today, _, day_end = _day_bounds(now, budget_cfg.timezone)
    until_midnight = max(1, int((day_end - now).total_seconds()) + 1)
    common: dict[str, Any] = {"budget_usd": budget, "day": today, "checked_at": now}

    if not budget_cfg.enforce:
        return GateState(True, "gate_off", None if snapshot is None else snapshot.spend_today_usd, None, None, None,
                         closes_early=False, message="the budget gate is OFF (budget.enforce = false): serving "
                         "whether or not spend can be observed", **common)
    if snapshot is None:
        why = f"billing samples could not be read ({error})" if error else "billing samples not read yet"
        return GateState(False, "billing_unobservable", None, None, None, None, closes_early=False,
                         message=f"{why}: serving blind is refused", retry_after_s=30, **common)

    last = snapshot.last_good_sample_at
    age = None if last is None else (now - last).total_seconds()
    newest = snapshot.newest_good_sample_at
    ahead_s = 0.0 if newest is None else (newest - now).total_seconds()
    stale = age is None or age > budget_cfg.max_sample_age_s
    spend = snapshot.spend_today_usd if snapshot.day == today else None  # the day rolled over since
    burn = snapshot.burn_usd_per_hour
    projected = None
    if spend is not None and burn is not None and last is not None:
        horizon_s = max(snapshot.sample_interval_s, (now - last).total_seconds())
        projected = spend + burn * Decimal(str(round(horizon_s, 3))) / _HOUR
    figures = dict(spend_today_usd=spend, burn_usd_per_hour=burn, last_good_sample_at=last,
                   sample_age_s=None if age is None else max(0.0, age), projected_spend_usd=projected, **common)

    if ahead_s > FUTURE_TOLERANCE_S:
        # A sample from the future says a clock is wrong (ours or the sampler's host's): its age
        # means nothing, so spend is unobservable until the clocks agree again.
        return GateState(False, "billing_unobservable", closes_early=False, retry_after_s=30, clock_fault=True,
                         message=f"clock fault: the last good billing sample is dated {ahead_s:.0f} s in the future, "
                                 "so its freshness cannot be judged and serving is refused (check NTP on this host "
                                 "and on the sampler's)", **figures)
    if stale:
        if last is None:
            missing = ", ".join(snapshot.missing_providers) or "any provider"
            freshness = f"no good billing sample yet from {missing}"
        else:
            freshness = f"the last good billing sample is {age:.0f} s old (limit {budget_cfg.max_sample_age_s} s)"
        if error:
            freshness += f"; the store could not be read ({error})"
    if budget is not None and spend is not None and spend >= budget:
        return GateState(False, "budget_exhausted", closes_early=False, retry_after_s=until_midnight,
                         message=f"today's spend ${spend:.2f} has reached the daily budget ${budget:.2f}; "
                                 f"it resets at midnight ({budget_cfg.timezone})", **figures)
    if stale:
        return GateState(False, "billing_unobservable", closes_early=False, retry_after_s=30,
                         message=f"{freshness}: spend is unobservable, so serving is refused "
                                 "(is `spot sample` running? see `spot cron`, or `spot serve --with-sampler`)",
                         **figures)
    if budget is None:
        return GateState(True, "no_budget", closes_early=False,
                         message="billing is observed; no daily budget configured (budget.daily_usd)", **figures)
    if spend is None:  # fresh samples but a snapshot of yesterday: wait for the next refresh
        return GateState(False, "billing_unobservable", closes_early=False, retry_after_s=5,
                         message="today's spend has not been read yet", **figures)
    if projected is not None and projected >= budget:
        return GateState(False, "budget_exhausted", closes_early=True, retry_after_s=until_midnight,
                         message=f"today's spend ${spend:.2f} plus the burn ${burn:.2f}/h until the next "
                                 f"sample would reach the daily budget ${budget:.2f}: closed early", **figures)
    return GateState(True, "ok", closes_early=False,
                     message=f"today's spend ${spend:.2f} of ${budget:.2f}", **figures)


_LAST_RECORDED = "SELECT open, reason, clock_fault FROM gate_events ORDER BY event_at DESC LIMIT 1"


def record_gate_state(store: Store, state: GateState) -> bool:
    """Record ``state`` in ``gate_events`` unless it is already the last state recorded (another
    gateway worker saw the same change first). Returns whether a row was written."""
    detail = {k: (str(v) if v is not None else None) for k, v in (
        ("spend_today_usd", state.spend_today_usd), ("budget_usd", state.budget_usd),
        ("projected_spend_usd", state.projected_spend_usd), ("burn_usd_per_hour", state.burn_usd_per_hour),
        ("last_good_sample_at", state.last_good_sample_at))}
    detail["sample_age_s"] = None if state.sample_age_s is None else round(state.sample_age_s, 1)
    detail["closes_early"] = state.closes_early
    with store.transaction() as con:
        last = con.execute(_LAST_RECORDED).fetchone()
        if last is not None and tuple(last) == state.change_key:
            return False
        con.execute("INSERT INTO gate_events VALUES (?, ?, ?, ?, ?, ?)",
                    [state.checked_at or _utc_now(), state.open, state.reason, state.clock_fault, state.message,
                     json.dumps(detail)])
    return True


def gate_state(store: Store, settings: Settings, now: datetime) -> GateState:
    """The gate's state at ``now``, read from the store (the pure form of ``BudgetGate``)."""
    return evaluate(read_snapshot(store, settings, now), settings, now)


_MAX_UNRECORDED = 100  # a store down for days keeps the last changes, not every flap


class BudgetGate:
    """The gate's state, kept current by a background thread; ``state`` never touches the store.

    Before the first refresh the gate is closed (fail closed). When a refresh cannot read the
    store, the last snapshot is re-evaluated at the new time, so the gate still closes once its
    samples grow stale. ``on_change(old, new)`` is called (from the refreshing thread) whenever
    ``open``, ``reason`` or ``clock_fault`` changes, e.g. to hibernate the fleet when the budget
    is spent. With ``record_changes`` (the gateway's), the first state read and each change are
    also recorded in ``gate_events`` (``record_gate_state``), from the refreshing thread.
    """

    def __init__(self, store: Store, settings: Settings, *, clock: Clock = _utc_now,
                 on_change: OnChange | None = None, refresh_s: float | None = None,
                 record_changes: bool = False) -> None:
        self.store = store
        self.settings = settings
        self.refresh_s = refresh_s if refresh_s is not None else settings.budget.refresh_s
        self._clock = clock
        self.on_change = on_change
        self._snapshot: Snapshot | None = None
        self._state = evaluate(None, settings, clock())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh_lock = threading.Lock()
        self.refreshes = 0  # completed refreshes, for tests and metrics
        self.last_error: str | None = None
        self.record_changes = record_changes
        # Changes not yet in gate_events because the store could not be written (busy, or a lake
        # whose catalog is down): recorded, oldest first and with their own times, once it can.
        self._unrecorded: list[GateState] = []

    @property
    def state(self) -> GateState:
        return self._state

    def refresh(self) -> GateState:
        """Recompute the state now (what the background thread does every ``refresh_s``)."""
        with self._refresh_lock:
            now = self._clock()
            error = None
            try:
                self._snapshot = read_snapshot(self.store, self.settings, now, self._snapshot)
            except Exception as exc:  # noqa: BLE001 - a busy or broken store must not stop the gate
                error = " ".join(str(exc).split()) or type(exc).__name__
                log.info("budget gate: store unreadable: %s", error)
            old, new = self._state, evaluate(self._snapshot, self.settings, now, error=error)
            self._state, self.last_error = new, error
            self.refreshes += 1
            first = self.refreshes == 1
        changed = old.change_key != new.change_key
        if self.record_changes and (changed or first):
            self._unrecorded = [*self._unrecorded, new][-_MAX_UNRECORDED:]
        if self._unrecorded:
            self._record_unrecorded()
        if self.on_change is not None and changed:
            try:
                self.on_change(old, new)
            except Exception:  # noqa: BLE001 - the caller's hook must not stop the refreshes
                log.exception("budget gate: on_change failed")
        return new

    def _record_unrecorded(self) -> None:
        while self._unrecorded:
            state = self._unrecorded[0]
            try:
                record_gate_state(self.store, state)
            except SpotError as exc:  # busy or unreachable: keep it for the next refresh
                log.warning("budget gate: the change to %s is not recorded yet (%s); retrying on the next refresh",
                            state.reason, exc.message)
                return
            except Exception:  # noqa: BLE001 - a broken store must not stop the gate
                log.exception("budget gate: could not record the change to %s", state.reason)
                return
            self._unrecorded.pop(0)

    def start(self) -> BudgetGate:
        """Refresh once (so the first request sees a real state), then keep refreshing."""
        if self._thread is not None:
            return self
        self._stop.clear()
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="budget-gate", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def __enter__(self) -> BudgetGate:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
