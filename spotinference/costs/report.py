"""The cost report for one window: the headline, coverage, gaps, a breakdown, the hosted comparison.

Every figure comes from a file in ``queries/`` (run through ``reports.query_session``); this module
only picks the files, types the rows and refuses to turn "not observed" into $0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from collections.abc import Callable
from typing import Any

from ..errors import InputError
from ..reports import query_session
from ..store import Store
from . import rollup
from .hosted import HostedComparison, HostedPrices, compare, load_hosted_prices

# --by NAME -> the query that answers it
BREAKDOWNS = {
    "day": "spend_by_day",
    "tier": "spend_by_tier",
    "model": "spend_by_model",
    "endpoint": "spend_by_endpoint",
    "key": "spend_by_key",
    "resource": "spend_by_resource",
    "type": "spend_by_type",
    "utilisation": "utilisation",
}
# Money columns of breakdown rows that mean nothing when the window is unobservable.
_MONEY = ("spend_usd", "statement_usd", "usd_per_mtok_output", "share")

SCOPE = (
    "Spend is the provider's bill for the fleet's GPU VMs and weights volumes (what spot created or "
    "adopted; deltas of each cumulative bill between samples); the rest of the account is shown on "
    "its own line, and the gateway's own machine and network egress are outside it."
)
# The bill may lag the window's end by this much and the window still be complete: one missed
# minute of cron plus the run's own time (the gate's default max_sample_age_s).
DEFAULT_FRESH_WITHIN_S = 180.0


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("window times must be timezone-aware")
        if self.end <= self.start:
            raise InputError(f"the window is empty: it ends ({self.end.isoformat()}) at or before it starts ({self.start.isoformat()})")


def trailing_window(days: float, now: datetime) -> Window:
    """The ``days`` before ``now``. It ends now, not on a whole minute: the report snaps its
    figures to the billing samples inside it and shows the rest as not billed yet."""
    if days <= 0:
        raise InputError(f"--days must be positive (got {days:g})")
    end = now.astimezone(UTC)
    return Window(end - timedelta(days=days), end)


@dataclass(frozen=True)
class Gap:
    start: datetime
    end: datetime
    minutes: int
    provider: str | None = None


@dataclass(frozen=True)
class Account:
    """One provider account's part of the window: its own bounds, coverage and gaps."""

    provider: str
    observable: bool  # a good run of this account ended inside the window
    start_bound_at: datetime | None  # the end of its last good run before the window
    end_bound_at: datetime | None  # the end of its last good run before the window's end
    window_minutes: int
    covered_minutes: int
    gaps: list[Gap]
    failed_runs: int = 0
    last_error: str | None = None

    @property
    def coverage(self) -> float:
        return self.covered_minutes / self.window_minutes if self.window_minutes else 0.0


@dataclass(frozen=True)
class Unbilled:
    """The part of the window after the last billing sample: served, not billed yet (never $0)."""

    start: datetime
    end: datetime
    requests: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class CostReport:
    window: Window
    observable: bool  # every billed account has a good sample inside the window
    spend_usd: Decimal | None  # None when unobservable: never $0 then
    prompt_tokens: int
    completion_tokens: int
    usd_per_mtok_output: Decimal | None  # None without output tokens or when unobservable
    usd_per_mtok_total: Decimal | None
    coverage: float  # 0-1: the least-covered account's share of minutes with an ok sampler run
    window_minutes: int
    covered_minutes: int
    gaps: list[Gap]
    hosted: HostedPrices | None
    comparisons: list[HostedComparison]
    by: str | None = None
    breakdown: list[dict[str, Any]] = field(default_factory=list)
    scope: str = SCOPE
    # The interval the quotient covers: (billed_from, billed_until], snapped to billing samples.
    billed_from: datetime | None = None
    billed_until: datetime | None = None
    outside_fleet_usd: Decimal | None = None  # the rest of the account: never in the quotient
    accounts: list[Account] = field(default_factory=list)
    not_billed_yet: Unbilled | None = None
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    fresh_within_s: float = DEFAULT_FRESH_WITHIN_S

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def billing_lag_s(self) -> float | None:
        """How far the bill lags the window's end (None when nothing was billed)."""
        if self.billed_until is None:
            return None
        return max(0.0, (self.window.end - self.billed_until).total_seconds())

    @property
    def complete(self) -> bool:
        """Observable, every account covered every minute up to the last sample, and the bill
        caught up to within ``fresh_within_s`` of the window's end."""
        lag = self.billing_lag_s
        return (self.observable and not self.gaps and lag is not None and lag <= self.fresh_within_s
                and all(a.covered_minutes == a.window_minutes for a in self.accounts))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; money stays exact (Decimal renders as a string by the caller)."""
        data: dict[str, Any] = {
            "window_start": self.window.start,
            "window_end": self.window.end,
            "billed_from": self.billed_from,
            "billed_until": self.billed_until,
            "observable": self.observable,
            "complete": self.complete,
            "spend_usd": self.spend_usd,
            "outside_fleet_usd": self.outside_fleet_usd,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "usd_per_mtok_output": self.usd_per_mtok_output,
            "usd_per_mtok_total": self.usd_per_mtok_total,
            "coverage": self.coverage,
            "window_minutes": self.window_minutes,
            "covered_minutes": self.covered_minutes,
            "gaps": [{"provider": g.provider, "start": g.start, "end": g.end, "minutes": g.minutes} for g in self.gaps],
            "billing_lag_s": self.billing_lag_s,
            "not_billed_yet": None if self.not_billed_yet is None else {
                "start": self.not_billed_yet.start, "end": self.not_billed_yet.end,
                "requests": self.not_billed_yet.requests, "prompt_tokens": self.not_billed_yet.prompt_tokens,
                "completion_tokens": self.not_billed_yet.completion_tokens},
            "accounts": [
                {"provider": a.provider, "observable": a.observable, "coverage": a.coverage,
                 "covered_minutes": a.covered_minutes, "window_minutes": a.window_minutes,
                 "start_bound_at": a.start_bound_at, "end_bound_at": a.end_bound_at,
                 "failed_runs": a.failed_runs, "last_error": a.last_error}
                for a in self.accounts
            ],
            "anomalies": self.anomalies,
            "scope": self.scope,
            "hosted": None,
        }
        if self.hosted is not None:
            data["hosted"] = {
                "as_of": self.hosted.as_of,
                "note": self.hosted.note,
                "file": self.hosted.file,
                "prices": [c.__dict__ for c in self.comparisons],
            }
        if self.by is not None:
            data["by"] = self.by
            data["rows"] = self.breakdown
        return data


_US = timedelta(microseconds=1)


def _records(run: Callable[..., Any], name: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    return run(name, window_start=start, window_end=end).records()


def billed_interval(bounds: list[dict[str, Any]], window: Window) -> tuple[datetime, datetime] | None:
    """The query window [start, end) covering (billed_from, billed_until] for these accounts'
    bounds, or None when some account has no good sample inside the window.

    It starts after the LATEST account's last sample before the window (each account's next
    sample is inside the window, so nothing before is counted twice, and consecutive windows
    partition time), and ends at the EARLIEST account's last sample (past it, some account's bill
    has not caught up with the tokens)."""
    if not bounds or any(not b["good_runs"] for b in bounds):
        return None
    starts = [b["start_bound_at"] for b in bounds if b["start_bound_at"] is not None]
    start = max(starts) + _US if starts else window.start
    end = min(b["end_bound_at"] for b in bounds) + _US
    return start, end


def report(store: Store, window: Window, *, by: str | None = None, now: datetime | None = None,
           hosted: HostedPrices | None = None, refresh_rollup: bool = True,
           accounts: list[str] | None = None, fresh_within_s: float = DEFAULT_FRESH_WITHIN_S) -> CostReport:
    """Run the cost queries for ``window``. ``now`` (default: the clock) settles the roll-up.

    ``accounts`` are the provider accounts that must be observed (the configured, sampled ones);
    any account that has sampler runs in the store counts too."""
    if by is not None and by not in BREAKDOWNS:
        raise InputError(f"--by must be one of {', '.join(BREAKDOWNS)} (got {by!r})")
    if refresh_rollup:
        rollup.refresh(store, now or datetime.now(UTC))
    with query_session(store) as run:
        return _report(run, window, by=by, hosted=hosted, accounts=accounts, fresh_within_s=fresh_within_s)


def _report(run: Callable[..., Any], window: Window, *, by: str | None, hosted: HostedPrices | None,
            accounts: list[str] | None, fresh_within_s: float) -> CostReport:
    found = {b["provider"]: b for b in _records(run, "billing_bounds", window.start, window.end)}
    for name in accounts or ():
        found.setdefault(name, {"provider": name, "start_bound_at": None, "end_bound_at": None, "good_runs": 0,
                                "failed_runs": 0, "last_error": None})
    bounds = [found[name] for name in sorted(found)]
    interval = billed_interval(bounds, window)
    observable = interval is not None
    q_start, q_end = interval if interval is not None else (window.start, window.end)
    head = _records(run, "cost_per_mtok", q_start, q_end)[0]
    # Coverage runs from the window's start to the last sample: the tail is "not billed yet".
    cov_end = max(q_end, window.start + _US) if observable else window.end
    coverage = {c["provider"]: c for c in _records(run, "coverage", window.start, cov_end)}
    gaps = [Gap(g["gap_start"], g["gap_end"], int(g["minutes"]), g["provider"])
            for g in _records(run, "coverage_gaps", window.start, cov_end) if g["provider"] in found]
    minutes = _minutes(window.start, cov_end)
    per_account = [
        Account(b["provider"], bool(b["good_runs"]), b["start_bound_at"], b["end_bound_at"], minutes,
                int(coverage.get(b["provider"], {}).get("covered_minutes") or 0),
                [g for g in gaps if g.provider == b["provider"]] if b["provider"] in coverage
                else [Gap(window.start, cov_end, minutes, b["provider"])],
                int(b["failed_runs"] or 0), b["last_error"])
        for b in bounds
    ]
    all_gaps = sorted((g for a in per_account for g in a.gaps), key=lambda g: (g.start, g.provider or ""))
    unbilled = None
    if observable and q_end < window.end:
        tail = _records(run, "tokens", q_end, window.end)[0]
        unbilled = Unbilled(q_end, window.end, int(tail["requests"]), int(tail["prompt_tokens"]),
                            int(tail["completion_tokens"]))
    rows: list[dict[str, Any]] = []
    if by is not None:
        rows = _records(run, BREAKDOWNS[by], q_start, q_end)
        if not observable:
            rows = [{k: (None if k in _MONEY else v) for k, v in row.items()} for row in rows]
        if by == "key":
            rows = with_key_limits(rows, _records(run, "key_statement", q_start, q_end))
    anomalies = _records(run, "billing_anomalies", q_start, q_end) if observable else []
    prices = hosted if hosted is not None else load_hosted_prices()
    spend = head["spend_usd"] if observable else None
    least = min(per_account, key=lambda a: a.coverage, default=None)
    return CostReport(
        window=window,
        observable=observable,
        spend_usd=spend,
        prompt_tokens=int(head["prompt_tokens"]),
        completion_tokens=int(head["completion_tokens"]),
        usd_per_mtok_output=head["usd_per_mtok_output"] if observable else None,
        usd_per_mtok_total=head["usd_per_mtok_total"] if observable else None,
        coverage=least.coverage if least is not None else 0.0,
        window_minutes=minutes,
        covered_minutes=least.covered_minutes if least is not None else 0,
        gaps=all_gaps,
        hosted=prices,
        comparisons=compare(prices, spend, int(head["prompt_tokens"]), int(head["completion_tokens"])),
        by=by,
        breakdown=rows,
        billed_from=q_start - _US if observable else None,
        billed_until=q_end - _US if observable else None,
        outside_fleet_usd=head["outside_fleet_usd"] if observable else None,
        accounts=per_account,
        not_billed_yet=unbilled,
        anomalies=anomalies,
        fresh_within_s=fresh_within_s,
    )


# What `--by key` adds beside each statement (queries/key_statement.sql), blank for a row with no key.
KEY_LIMIT_FIELDS = ("daily_budget_usd", "monthly_budget_usd", "reservations_released_usd", "refused_rpm",
                    "refused_tpm", "refused_concurrency", "refused_budget", "refused_price_unknown",
                    "refused_expired", "refused_model_not_allowed")


def with_key_limits(statements: list[dict[str, Any]], limits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each statement row with its key's budgets, released reservations and refusals by limit. The
    statement's own fields are untouched: these are beside the bill, never part of it."""
    by_key = {row["key_id"]: row for row in limits}
    blank = dict.fromkeys(KEY_LIMIT_FIELDS)
    return [{**row, **{f: by_key.get(row["key_id"], blank)[f] for f in KEY_LIMIT_FIELDS}} for row in statements]


def _minutes(start: datetime, end: datetime) -> int:
    """Whole or partial UTC minutes that [start, end) touches (as coverage.sql counts them)."""
    first = int(start.timestamp() * 1_000_000) // 60_000_000
    last = (int(end.timestamp() * 1_000_000) - 1) // 60_000_000
    return max(last - first + 1, 0)
