"""Recording what the ledger refused to count, as each good run is written.

The verdicts are the ledger's own (``billing_increases``, migrations 0008 and 0015): a sample
whose total fell below its resource's high-water mark (a decrease: counts nothing), a sample
without a readable total (a missing sample), and a resource first seen after its account's first
good run, with no create time and a total larger than its rate could have billed since that run
(an unexplained first total: a baseline, so its lifetime bill is never read as today's spend). They are kept with the run and the provider's item, so that
`spot cost` and `spot doctor` can show them long after the days are rolled up.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

_RECORD = """
INSERT INTO billing_anomalies
WITH refused AS (  -- the ledger's verdicts on this run's totals (billing_increases read once)
    SELECT i.run_id, i.sampled_at, i.provider, i.resource_type, i.resource_id, b.name,
           CASE WHEN i.first_total = 'unexplained' THEN 'unexplained_first_total' ELSE 'decrease' END AS kind,
           i.total_bill_usd, i.previous_high_usd, b.raw
    FROM billing_increases($at, $at + INTERVAL 1 MICROSECOND) AS i
    JOIN billing_samples AS b
        ON b.run_id = i.run_id AND b.provider = i.provider AND b.resource_type = i.resource_type
       AND b.resource_id = i.resource_id
    WHERE i.run_id = $run_id AND (i.total_bill_usd < i.previous_high_usd OR i.first_total = 'unexplained')
)
SELECT * FROM refused
UNION ALL
SELECT run_id, sampled_at, provider, resource_type, resource_id, name, 'missing_total', NULL, NULL, raw
FROM billing_samples
WHERE run_id = $run_id AND total_bill_usd IS NULL AND NOT coalesce(excluded, false)
"""


def record(con: duckdb.DuckDBPyConnection, run_id: str, sampled_at: datetime) -> int:
    """Record the anomalies of one good run already written (in the caller's transaction)."""
    con.execute(_RECORD, {"run_id": run_id, "at": sampled_at})
    (count,) = con.execute("SELECT count(*) FROM billing_anomalies WHERE run_id = ?", [run_id]).fetchone()
    return int(count)
