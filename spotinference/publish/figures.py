"""The published figures: the trailing week's headline, the last 90 days by day, the week by tier.

Every figure comes from ``costs.report`` (so from ``queries/*.sql``), the same code path as
``spot cost``: the page's headline for a window is ``spot cost --json``'s for that window.
``to_data`` is the documented, stable ``data.json`` (``SCHEMA_VERSION``): money as exact decimal
strings, never a number for what was not observed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from ..costs import CostReport, Window, report
from ..costs.plot import DaySpend, daily_spend
from ..store import Store

SCHEMA_VERSION = 1
HEADLINE_DAYS = 7
CHART_DAYS = 90
# The files in queries/ behind each figure, shown verbatim on method.html.
QUERIES = {
    "The headline: spend over output tokens between two billing samples": "cost_per_mtok",
    "Where the window's billed interval starts and ends (each account's samples)": "billing_bounds",
    "Billing coverage: the minutes with a good sampler run": "coverage",
    "Billing gaps": "coverage_gaps",
    "Served after the last sample: not billed yet": "tokens",
    "The chart: spend and cost per million output tokens per UTC day": "spend_by_day",
    "The band by tier": "spend_by_tier",
    "The observed utilisation by tier: busy hours over paid GPU hours": "utilisation",
}


@dataclass(frozen=True)
class Figures:
    generated_at: datetime
    headline: CostReport  # the trailing HEADLINE_DAYS, blended across the fleet
    tiers: CostReport  # the same window by tier
    utilisation: CostReport  # the same window: paid GPU hours and busy share per tier
    chart: CostReport  # the last CHART_DAYS by day
    days: list[DaySpend]

    @property
    def status(self) -> str:
        """complete | incomplete | unobservable: what the headline may claim."""
        if not self.headline.observable:
            return "unobservable"
        return "complete" if self.headline.complete else "incomplete"


def gather(store: Store, until: datetime, *, now: datetime, accounts: list[str],
           fresh_within_s: float) -> Figures:
    """The figures for the week and the 90 days that end at ``until``."""
    options: dict[str, Any] = {"now": now, "accounts": accounts, "fresh_within_s": fresh_within_s}
    week = Window(until - timedelta(days=HEADLINE_DAYS), until)
    headline = report(store, week, **options)
    tiers = report(store, week, by="tier", refresh_rollup=False, **options)
    utilisation = report(store, week, by="utilisation", refresh_rollup=False, **options)
    chart = report(store, Window(until - timedelta(days=CHART_DAYS), until), by="day", refresh_rollup=False, **options)
    return Figures(now, headline, tiers, utilisation, chart, daily_spend(chart))


def tier_rows(f: Figures) -> list[dict[str, Any]]:
    """The week by tier, each with its observed utilisation (None where it had no GPU VM billed)."""
    used = {row["tier"]: row for row in f.utilisation.breakdown}
    return [{**row, "paid_gpu_hours": used.get(row["tier"], {}).get("paid_gpu_hours"),
             "busy_share": used.get(row["tier"], {}).get("busy_share")} for row in f.tiers.breakdown]


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def to_data(f: Figures) -> dict[str, Any]:
    """data.json (schema_version 1; README "spot publish" documents every key)."""
    h = f.headline
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": _time(f.generated_at),
        "headline": {
            "status": f.status,
            "window_start": _time(h.window.start),
            "window_end": _time(h.window.end),
            "billed_from": _time(h.billed_from),
            "billed_until": _time(h.billed_until),
            "observable": h.observable,
            "complete": h.complete,
            "coverage": h.coverage,
            "gaps": len(h.gaps),
            "spend_usd": _money(h.spend_usd),
            "prompt_tokens": h.prompt_tokens,
            "completion_tokens": h.completion_tokens,
            "usd_per_mtok_output": _money(h.usd_per_mtok_output),
            "usd_per_mtok_total": _money(h.usd_per_mtok_total),
        },
        "tiers": [
            {"tier": r["tier"], "spend_usd": _money(r["spend_usd"]), "prompt_tokens": r["prompt_tokens"],
             "completion_tokens": r["completion_tokens"], "usd_per_mtok_output": _money(r["usd_per_mtok_output"]),
             "paid_gpu_hours": None if r["paid_gpu_hours"] is None else float(r["paid_gpu_hours"]),
             "busy_share": None if r["busy_share"] is None else float(r["busy_share"])}
            for r in tier_rows(f)
        ],
        "daily": [
            {"day": d.day.isoformat(), "status": d.status, "spend_usd": _money(d.spend_usd),
             "usd_per_mtok_output": _money(d.usd_per_mtok_output)}
            for d in f.days
        ],
        "hosted": None if h.hosted is None else {
            "as_of": str(h.hosted.as_of), "note": h.hosted.note,
            "prices": [{"provider": c.provider, "model": c.model, "usd_per_mtok_input": _money(c.usd_per_mtok_input),
                        "usd_per_mtok_output": _money(c.usd_per_mtok_output)} for c in h.comparisons],
        },
        "scope": h.scope,
        "queries": sorted(set(QUERIES.values())),
    }
