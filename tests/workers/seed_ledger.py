"""Feeds one fixed ledger into the store a config names (file or DuckLake), the same rows every
time: ``python seed_ledger.py CONFIG``. Run by the lake tests with the ducklake venv's python.

Billing: one sampler run a minute 2026-03-01 09:59-12:00 (none 10:30-10:39), a t1 VM and its
volume, a t2 VM, and a developer's VM outside the fleet. Requests: 300 rows through the spool
and the flush process (the gateway's own path), keys, tiers, models and statuses mixed.
"""

from __future__ import annotations

import random
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from spotinference.billing import anomalies
from spotinference.config import load_settings
from spotinference.store import Store
from spotinference.store.flush_process import SpoolFlushProcess

START = datetime(2026, 3, 1, 9, 59, tzinfo=UTC)
END = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GAP = (datetime(2026, 3, 1, 10, 30, tzinfo=UTC), datetime(2026, 3, 1, 10, 40, tzinfo=UTC))
# resource -> (type, tier, USD a minute, USD an hour)
RESOURCES = {
    "vm-1": ("vm", "t1", Decimal("0.10"), Decimal("6")),
    "vol-1": ("volume", "t1", Decimal("0.01"), Decimal("0.6")),
    "gpu-2": ("vm", "t2", Decimal("0.25"), Decimal("15")),
    "dev-box": ("vm", None, Decimal("1.00"), Decimal("60")),
}


def seed_billing(store: Store) -> None:
    t, k, seq = START, 0, 0
    with store.transaction() as con:
        while t < END:
            if not GAP[0] <= t < GAP[1]:
                seq += 1
                run_id, sampled = f"run-{t.isoformat()}", t + timedelta(seconds=0.5)
                con.execute("INSERT INTO sample_runs (run_id, provider, started_at, finished_at, ok, error, "
                            "resource_count, seq, sampled_at) VALUES (?, 'sim', ?, ?, true, NULL, ?, ?, ?)",
                            [run_id, t, t + timedelta(seconds=1), len(RESOURCES), seq, sampled])
                for name, (kind, tier, per_minute, per_hour) in RESOURCES.items():
                    con.execute("INSERT INTO billing_samples (run_id, sampled_at, provider, resource_id, "
                                "resource_type, name, tier, usd_per_hour, total_bill_usd, active, raw) "
                                "VALUES (?, ?, 'sim', ?, ?, ?, ?, ?, ?, true, '{}')",
                                [run_id, sampled, name, kind, name, tier, per_hour, per_minute * k])
                anomalies.record(con, run_id, sampled)
            t, k = t + timedelta(minutes=1), k + 1
        for name, (kind, tier, _, _) in RESOURCES.items():
            if tier is not None:
                con.execute("INSERT INTO fleet_resources VALUES ('sim', ?, ?, ?, ?, ?, 'adopted')",
                            [kind, name, name, tier, START])


def seed_requests(store: Store) -> None:
    rng = random.Random(20)
    writer = store.spool_writer("requests", rotate_after_rows=40)
    flusher = SpoolFlushProcess(store, writer, interval_s=0.2)
    flusher.start()
    try:
        for n in range(300):
            finished = START + timedelta(seconds=rng.randrange(2 * 3600))
            status = rng.choice([200] * 8 + [429, 502])
            row = {
                "request_id": f"req-{n:04d}", "gateway_id": "gw-1", "key_id": rng.choice(["key-a", "key-b", "key-c"]),
                "model": rng.choice(["m1", "m2"]), "tier": rng.choice(["t1", "t2"]), "node": "node",
                "started_at": finished - timedelta(milliseconds=rng.randrange(100, 5000)), "finished_at": finished,
                "prompt_tokens": rng.randrange(10, 4000) if status == 200 else None,
                "completion_tokens": rng.randrange(0, 1000) if status == 200 else None,
                "http_status": status, "streamed": rng.random() < 0.5,
            }
            writer.append(row)
    finally:
        flusher.stop()


def main() -> None:
    settings, _ = load_settings(Path(sys.argv[1]))
    store = Store.from_settings(settings)
    seed_billing(store)
    seed_requests(store)
    with store.reading() as con:
        print(con.execute("SELECT count(*) FROM requests").fetchone()[0])


if __name__ == "__main__":
    main()
