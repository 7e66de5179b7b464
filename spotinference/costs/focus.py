"""`spot cost --focus FILE.csv|FILE.parquet`: the window's fleet spend as FOCUS 1.2 rows.

FOCUS is the FinOps Foundation's open cost-and-usage format. The columns follow FOCUS 1.2 as
published in the specification's own repository (github.com/FinOps-Open-Cost-and-Usage-Spec/
FOCUS_Spec, tag ``v1.2``, ``specification/columns/*.md``, each column's "Column Feature Level"):
its 21 Mandatory columns are ``FOCUS_1_2_MANDATORY`` below, and every Conditional column whose
condition applies here is emitted too (ConsumedQuantity/ConsumedUnit for usage, ListUnitPrice,
PricingCategory, ResourceId/ResourceName/ResourceType). FOCUS 1.2 names the provider column
``ProviderName``; ``ServiceProviderName`` is its FOCUS 1.3 successor, so it is not in a 1.2 file.
spot's own figures ride in ``x_``-prefixed columns, as the specification's custom-column rule asks.

What the money columns equal, and why: ``BilledCost`` is the increase of each resource's
cumulative bill as the provider reported it (the ledger's invoice-true rule), and ``EffectiveCost``,
``ListCost`` and ``ContractedCost`` equal it, because the provider's bill is the only price spot
observes: no list price apart from it, no negotiated discount and no commitment to amortise.

The rows are produced by ``queries/focus_charges.sql`` over the billed interval of ``spot cost``
for the same window (so ``sum(BilledCost)`` is exactly ``spot cost``'s spend), and written by
DuckDB's own ``COPY`` (CSV with a header, or Parquet). An hour without a good billing sample has
no row, never a $0 one: the report's gaps say which; an unobservable window writes no file.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from ..errors import InputError, SpotError
from ..reports import query_text
from ..store import Store
from .report import CostReport

FOCUS_VERSION = "1.2"
# FOCUS 1.2's Mandatory columns (FOCUS_Spec tag v1.2, specification/columns/*.md).
FOCUS_1_2_MANDATORY = (
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargePeriodEnd",
    "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost",
    "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
)
FORMATS = {".csv": "CSV", ".parquet": "PARQUET"}
QUERY = "focus_charges"
UNOBSERVABLE_EXIT = 9  # the same code as `spot cost --strict` on an incomplete window


class FocusUnobservableError(SpotError):
    """No good billing sample in the window: its spend is unknown, so no FOCUS file is written
    (an empty file would read as $0)."""

    exit_code = UNOBSERVABLE_EXIT


@dataclass(frozen=True)
class FocusExport:
    path: Path
    file_format: str  # "CSV" or "PARQUET"
    rows: int
    billed_usd: Decimal  # sum(BilledCost): equals the report's spend_usd
    missing_hours: int  # whole or partial UTC hours of the billed interval inside a billing gap


def check_target(path: Path) -> str:
    """The COPY format for ``path``, or one InputError naming what is expected."""
    file_format = FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise InputError(f"--focus {path}: expected a file name ending in .csv or .parquet")
    parent = path.expanduser().parent
    if not parent.is_dir():
        raise InputError(f"--focus {path}: the folder {parent} does not exist")
    return file_format


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _gap_hours(report: CostReport) -> int:
    hours: set[int] = set()
    hour_us = 3_600_000_000
    for gap in report.gaps:
        first = int(gap.start.timestamp() * 1_000_000) // hour_us
        last = (int(gap.end.timestamp() * 1_000_000) - 1) // hour_us
        hours.update(range(first, last + 1))
    return len(hours)


def export(store: Store, report: CostReport, path: Path) -> FocusExport:
    """Write the FOCUS rows of ``report``'s billed interval to ``path`` (.csv or .parquet)."""
    file_format = check_target(path)
    if not report.observable or report.billed_from is None or report.billed_until is None:
        raise FocusUnobservableError(
            "no FOCUS file written: the window has no good billing sample, so its spend is unknown (not $0)",
            hint="is `spot sample` running (spot cron)? Widen --days/--since to a window it observed.")
    us = timedelta(microseconds=1)
    params = {"window_start": report.billed_from + us, "window_end": report.billed_until + us}
    target = path.expanduser().resolve()
    partial = target.with_name(f".{target.name}.partial")
    options = "FORMAT CSV, HEADER" if file_format == "CSV" else "FORMAT PARQUET"
    store.flush()
    with store.reading() as con:
        con.execute("SET TimeZone = 'UTC'")  # the CSV's times are written in UTC, as FOCUS asks
        con.execute(f"CREATE TEMP TABLE focus_export AS {query_text(QUERY)}", params)
        rows, billed = con.execute("SELECT count(*), coalesce(sum(BilledCost), 0) FROM focus_export").fetchone()
        con.execute(f"COPY focus_export TO {_sql_string(str(partial))} ({options})")
    partial.replace(target)  # a reader never sees half a file
    return FocusExport(target, file_format, int(rows), Decimal(billed), _gap_hours(report))
