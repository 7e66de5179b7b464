"""Synthetic billing and request data at the cost report's scale, generated inside DuckDB.

One sampler run a minute (a few failed, leaving gaps), one billing row per resource per good run,
and request rows spread evenly over the same span. Every figure is a closed form of the row
number (no Python loops, no random state), so a build is reproducible and the rows land in time
order, which keeps DuckDB's zone maps useful for time-window filters.

Resources: every fourth is a weights volume (a flat storage rate); the others are GPU VMs that
bill at their full rate for a block of hours each day and at a hibernated rate otherwise. The
cumulative bill is the exact integral of that rate, so it never decreases.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from spotinference.store import Store

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)  # the first minute of generated data
FAILED_EVERY = 997  # every 997th sampler run failed: a one-minute gap each ~16.6 hours
KEYS = 20
TIERS = 3

_RUNS = """
INSERT INTO sample_runs (run_id, provider, started_at, finished_at, ok, error, resource_count, seq, sampled_at)
SELECT 'run-' || m,
       'sim',
       $epoch + to_microseconds(m * 60000000 + 1000000),
       $epoch + to_microseconds(m * 60000000 + 1500000),
       m % $failed_every <> $failed_every // 2,
       CASE WHEN m % $failed_every = $failed_every // 2 THEN 'simulated provider 503' END,
       CASE WHEN m % $failed_every = $failed_every // 2 THEN 0 ELSE $resources END,
       m + 1,
       CASE WHEN m % $failed_every <> $failed_every // 2 THEN $epoch + to_microseconds(m * 60000000 + 1200000) END
FROM range($minutes) AS t(m)
"""

# mod: minute of the day; a, h: the VM's daily serving block [a, a + h) in minutes.
_SAMPLES = """
INSERT INTO billing_samples (run_id, sampled_at, provider, resource_id, resource_type, name, tier, usd_per_hour, total_bill_usd, active, raw)
WITH grid AS (
    SELECT m, r,
           m // 1440 AS d,
           m % 1440 AS mod,
           (r % 12) * 60 AS a,
           (8 + r % 8) * 60 AS h,
           r % 4 = 3 AS is_volume,
           1.9 + (r % 5) * 0.5 AS full_rate,
           0.05 AS low_rate
    FROM (SELECT s // $resources AS m, s % $resources AS r FROM range($minutes * $resources) AS t(s))
    WHERE m % $failed_every <> $failed_every // 2
)
SELECT 'run-' || m,
       $epoch + to_microseconds(m * 60000000 + 1200000),
       'sim',
       'res-' || r,
       CASE WHEN is_volume THEN 'volume' ELSE 'vm' END,
       'node-' || r,
       'tier-' || (r % $tiers),
       CAST(CASE WHEN is_volume THEN 0.02
                 WHEN mod >= a AND mod < a + h THEN full_rate ELSE low_rate END AS DECIMAL(18, 6)),
       CAST(round(CASE WHEN is_volume THEN 0.02 * m / 60.0
            ELSE (d * (h * full_rate + (1440 - h) * low_rate)
                  + least(greatest(mod - a, 0), h) * full_rate
                  + (mod - least(greatest(mod - a, 0), h)) * low_rate) / 60.0 END, 6) AS DECIMAL(18, 6)),
       true,
       '{}'
FROM grid
"""

_REQUESTS = """
INSERT INTO requests (request_id, gateway_id, key_id, model, tier, node, started_at, finished_at,
                      prompt_tokens, completion_tokens, http_status, finish_reason)
SELECT 'req-' || i,
       'gw-1',
       'key-' || (i % $keys),
       'model-' || (i % $tiers),
       'tier-' || (i % $tiers),
       'node-' || (i % $tiers),
       $epoch + to_microseconds(CAST(i::HUGEINT * $span_us // $rows AS BIGINT) - (i * 7919) % 20000000),
       $epoch + to_microseconds(CAST(i::HUGEINT * $span_us // $rows AS BIGINT)),
       100 + i % 900,
       50 + (i * 31) % 500,
       200,
       'stop'
FROM range($rows) AS t(i)
"""


def build(home: Path, *, days: int, resources: int, request_rows: int) -> Store:
    """Create (or refill) a data directory at ``home`` holding the generated rows."""
    store = Store(home)
    store.migrate()
    minutes = days * 1440
    common = {"epoch": EPOCH, "failed_every": FAILED_EVERY}
    with store.writing() as con:
        con.execute("SET enable_progress_bar = false")
        con.execute("DELETE FROM sample_runs; DELETE FROM billing_samples; DELETE FROM billing_daily; "
                    "DELETE FROM billing_rollup_progress")
        con.execute(_RUNS, {**common, "minutes": minutes, "resources": resources})
        con.execute(_SAMPLES, {**common, "minutes": minutes, "resources": resources, "tiers": TIERS})
        con.execute("DELETE FROM fleet_resources")
        con.execute("INSERT INTO fleet_resources SELECT provider, resource_type, resource_id, any_value(name), "
                    "any_value(tier), min(sampled_at), 'adopted' FROM billing_samples "
                    "WHERE run_id = 'run-0' GROUP BY ALL")  # every generated resource is the fleet's
        con.execute("CHECKPOINT")
    return add_requests(store, days=days, request_rows=request_rows)


def add_requests(store: Store, *, days: int, request_rows: int) -> Store:
    """Replace the request log with ``request_rows`` rows spread evenly over ``days`` days."""
    with store.writing() as con:
        con.execute("SET enable_progress_bar = false")
        con.execute("DELETE FROM requests")
        con.execute(
            _REQUESTS,
            {"epoch": EPOCH, "rows": request_rows, "span_us": days * 1440 * 60_000_000, "keys": KEYS, "tiers": TIERS},
        )
        con.execute("CHECKPOINT")
    return store
