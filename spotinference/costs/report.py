"""The cost report for one window: the headline, coverage, gaps, a breakdown, the hosted comparison.

Every figure comes from a file in ``queries/`` (run through ``reports.run_query``); this module
only picks the files, types the rows and refuses to turn "not observed" into $0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from ..errors import InputError
from ..reports import run_query
from ..store import Store
from . import rollup
from .hosted import HostedComparison, HostedPrices, compare, load_hosted_prices

# --by NAME -> the query that answers it
BREAKDOWNS = {
    "day": "spend_by_day",
    "tier": "spend_by_tier",
    "model": "spend_by_model",
    "key": "spend_by_key",
    "resource": "spend_by_resource",
    "utilisation": "utilisation",
}
# Money columns of breakdown rows that mean nothing when the window is unobservable.
_MONEY = ("spend_usd", "statement_usd", "usd_per_mtok_output", "share")

SCOPE = (
    "Spend is the provider's bill for the fleet's GPU VMs and weights volumes (deltas of its "
    "cumulative bill between samples); the gateway's own machine and network egress are outside it."
)


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
    """The ``days`` before ``now``, ending on the last whole minute."""
    if days <= 0:
        raise InputError(f"--days must be positive (got {days:g})")
    end = now.astimezone(UTC).replace(second=0, microsecond=0)
    return Window(end - timedelta(days=days), end)


@dataclass(frozen=True)
class Gap:
    start: datetime
    end: datetime
    minutes: int


@dataclass(frozen=True)
class CostReport:
    window: Window
    observable: bool  # an ok sampler run started inside the window
    spend_usd: Decimal | None  # None when unobservable: never $0 then
    prompt_tokens: int
    completion_tokens: int
    usd_per_mtok_output: Decimal | None  # None without output tokens or when unobservable
    usd_per_mtok_total: Decimal | None
    coverage: float  # 0-1: share of the window's minutes with an ok sampler run
    window_minutes: int
    covered_minutes: int
    gaps: list[Gap]
    hosted: HostedPrices | None
    comparisons: list[HostedComparison]
    by: str | None = None
    breakdown: list[dict[str, Any]] = field(default_factory=list)
    scope: str = SCOPE

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def complete(self) -> bool:
        return self.observable and self.covered_minutes == self.window_minutes

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; money stays exact (Decimal renders as a string by the caller)."""
        data: dict[str, Any] = {
            "window_start": self.window.start,
            "window_end": self.window.end,
            "observable": self.observable,
            "spend_usd": self.spend_usd,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "usd_per_mtok_output": self.usd_per_mtok_output,
            "usd_per_mtok_total": self.usd_per_mtok_total,
            "coverage": self.coverage,
            "window_minutes": self.window_minutes,
            "covered_minutes": self.covered_minutes,
            "gaps": [{"start": g.start, "end": g.end, "minutes": g.minutes} for g in self.gaps],
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


def _one(store: Store, name: str, window: Window) -> dict[str, Any]:
    return run_query(store, name, window_start=window.start, window_end=window.end).records()[0]


def report(store: Store, window: Window, *, by: str | None = None, now: datetime | None = None,
           hosted: HostedPrices | None = None, refresh_rollup: bool = True) -> CostReport:
    """Run the cost queries for ``window``. ``now`` (default: the clock) settles the roll-up."""
    if by is not None and by not in BREAKDOWNS:
        raise InputError(f"--by must be one of {', '.join(BREAKDOWNS)} (got {by!r})")
    if refresh_rollup:
        rollup.refresh(store, now or datetime.now(UTC))
    head = _one(store, "cost_per_mtok", window)
    cov = _one(store, "coverage", window)
    gaps = [
        Gap(r["gap_start"], r["gap_end"], int(r["minutes"]))
        for r in run_query(store, "coverage_gaps", window_start=window.start, window_end=window.end).records()
    ]
    observable = bool(head["observable"])
    rows: list[dict[str, Any]] = []
    if by is not None:
        rows = run_query(store, BREAKDOWNS[by], window_start=window.start, window_end=window.end).records()
        if not observable:
            rows = [{k: (None if k in _MONEY else v) for k, v in row.items()} for row in rows]
    prices = hosted if hosted is not None else load_hosted_prices()
    spend = head["spend_usd"] if observable else None
    return CostReport(
        window=window,
        observable=observable,
        spend_usd=spend,
        prompt_tokens=int(head["prompt_tokens"]),
        completion_tokens=int(head["completion_tokens"]),
        usd_per_mtok_output=head["usd_per_mtok_output"],
        usd_per_mtok_total=head["usd_per_mtok_total"],
        coverage=float(cov["coverage"] or 0.0),
        window_minutes=int(cov["window_minutes"]),
        covered_minutes=int(cov["covered_minutes"]),
        gaps=gaps,
        hosted=prices,
        comparisons=compare(prices, spend, int(head["prompt_tokens"]), int(head["completion_tokens"])),
        by=by,
        breakdown=rows,
    )
