"""Sampler runs as the store records them: which providers are sampled, and their last good runs.

Shared by the sampler (``sampler``), the budget gate (``budget``) and `spot doctor`, so that
"which providers have billing behind them" and "how fresh is billing" mean one thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

from ..config import Settings


def sampled_providers(settings: Settings) -> list[str]:
    """The providers the sampler reads: those the tiers use, else every configured provider."""
    used = sorted({tier.provider for tier in settings.tiers.values()})
    return used or sorted(settings.providers)


@dataclass(frozen=True)
class GoodRun:
    """A provider's latest ok sampler run, and when the ok run before it started (if any)."""

    provider: str
    run_id: str
    started_at: datetime
    finished_at: datetime
    previous_started_at: datetime | None


_LAST_GOOD = """
SELECT provider,
       arg_max(run_id, started_at)      AS run_id,
       max(started_at)                  AS started_at,
       arg_max(finished_at, started_at) AS finished_at,
       max(started_at, 2)               AS latest_two
FROM sample_runs
WHERE ok AND list_contains($providers, provider)
GROUP BY provider
"""


def last_good_runs(con: duckdb.DuckDBPyConnection, providers: list[str]) -> dict[str, GoodRun]:
    """Each provider's latest ok run; a provider without one is absent from the result."""
    if not providers:
        return {}
    found = {}
    for provider, run_id, started_at, finished_at, latest_two in con.execute(
        _LAST_GOOD, {"providers": providers}
    ).fetchall():
        previous = latest_two[1] if len(latest_two) > 1 else None
        found[provider] = GoodRun(provider, run_id, started_at, finished_at, previous)
    return found
