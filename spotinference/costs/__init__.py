"""Invoice-true cost: spend between billing samples over tokens served, from `queries/*.sql`.

``report(store, window)`` runs the queries for a window and returns a ``CostReport``; it never
prints. ``rollup.refresh`` keeps the daily roll-up that makes year-long windows fast.
"""

from .hosted import HostedComparison, HostedPrices, load_hosted_prices
from .report import BREAKDOWNS, CostReport, Gap, Window, report, trailing_window

__all__ = [
    "BREAKDOWNS",
    "CostReport",
    "Gap",
    "HostedComparison",
    "HostedPrices",
    "Window",
    "load_hosted_prices",
    "report",
    "trailing_window",
]
