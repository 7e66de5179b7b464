"""A process that loads the store the way one of spot's real processes does.

Roles (``python -m tests.workers.store_load ROLE SECONDS``; SPOT_HOME names the data directory):

* ``requests``: the gateway: spool one request row per append at RATE rows/s, with the gateway's
  own flush process copying them into DuckDB every half second.
* ``samples``: cron's sampler: every second, one transaction with a run row and 3 sample rows.
* ``reads``: an operator: aggregate queries over both tables in a loop.
* ``acked``: a gateway that prints each row id once ``append`` returns (for the kill -9 test).

Each role prints one JSON line of what it did, including how long it waited for the database.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path

from spotinference.store import Store
from spotinference.store.flush_process import SpoolFlushProcess


def request_row(request_id: str) -> dict[str, object]:
    now = datetime.now(UTC)
    return {
        "request_id": request_id,
        "gateway_id": "load-test",
        "key_id": "key-1",
        "model": "tiny-chat",
        "tier": "tiny",
        "node": "node-1",
        "started_at": now,
        "finished_at": now,
        "ttft_ms": 12.5,
        "prompt_tokens": 7,
        "completion_tokens": 11,
        "http_status": 200,
        "finish_reason": "stop",
        "streamed": True,
    }


def wait_stats(store: Store) -> dict[str, float]:
    waits = sorted(store.lock.stats.waits_s) or [0.0]
    return {
        "lock_acquisitions": store.lock.stats.acquisitions,
        "lock_wait_median_ms": statistics.median(waits) * 1000,
        "lock_wait_p99_ms": waits[int(0.99 * (len(waits) - 1))] * 1000,
        "lock_wait_max_ms": waits[-1] * 1000,
    }


def role_requests(store: Store, seconds: float, rate: float) -> dict[str, object]:
    writer = store.spool_writer("requests", rotate_after_s=0.5)
    flusher = SpoolFlushProcess(store, writer, interval_s=0.5)
    flusher.start()
    interval = 1.0 / rate
    sent = 0
    start = time.monotonic()
    while (now := time.monotonic()) - start < seconds:
        due = int((now - start) / interval) + 1
        while sent < due:
            writer.append(request_row(str(uuid.uuid4())))
            sent += 1
        time.sleep(interval / 2)
    flusher.stop()
    return {"rows": sent, "rate": sent / (time.monotonic() - start)}


def role_samples(store: Store, seconds: float) -> dict[str, object]:
    runs = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        run_id = str(uuid.uuid4())
        now = datetime.now(UTC)
        with store.transaction() as con:
            con.execute(
                "INSERT INTO sample_runs (run_id, provider, started_at, finished_at, ok, error, resource_count, seq, sampled_at) "
                "VALUES (?, 'sim', ?, ?, true, NULL, 3, (SELECT coalesce(max(seq), 0) + 1 FROM sample_runs), ?)", [run_id, now, now, now]
            )
            for n in range(3):
                con.execute(
                    "INSERT INTO billing_samples (run_id, sampled_at, provider, resource_id, resource_type, name, tier, usd_per_hour, total_bill_usd, active, raw) VALUES (?, ?, 'sim', ?, 'vm', ?, 'tiny', 1.9, ?, true, '{}')",
                    [run_id, now, f"vm-{n}", f"node-{n}", runs * 0.03],
                )
        runs += 1
        time.sleep(max(0.0, start + runs - time.monotonic()))
    return {"runs": runs, "samples": runs * 3}


def role_reads(store: Store, seconds: float) -> dict[str, object]:
    reads = failures = 0
    errors: list[str] = []
    last_count = -1
    went_backwards = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            with store.reading() as con:
                count, tokens = con.execute(
                    "SELECT count(*), coalesce(sum(prompt_tokens + completion_tokens), 0) FROM requests"
                ).fetchone()
                con.execute(
                    "SELECT resource_id, max(total_bill_usd) - min(total_bill_usd) FROM billing_samples "
                    "GROUP BY resource_id"
                ).fetchall()
            if count < last_count:
                went_backwards += 1
            last_count = count
            reads += 1
        except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
            failures += 1
            errors.append(f"{type(exc).__name__}: {exc}")
    return {"reads": reads, "failures": failures, "errors": errors[:5], "went_backwards": went_backwards}


def role_acked(store: Store, seconds: float) -> dict[str, object]:
    writer = store.spool_writer("requests", rotate_after_s=0.2)
    flusher = SpoolFlushProcess(store, writer, interval_s=0.2)
    flusher.start()
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        request_id = str(uuid.uuid4())
        writer.append(request_row(request_id))
        sys.stdout.write(f"acked {request_id}\n")
        sys.stdout.flush()
        sent += 1
        if sent % 50 == 0:
            time.sleep(0.001)
    flusher.stop()
    return {"rows": sent}


def main() -> None:
    role, seconds = sys.argv[1], float(sys.argv[2])
    rate = float(sys.argv[3]) if len(sys.argv) > 3 else 250.0
    store = Store(Path(os.environ["SPOT_HOME"]))
    try:
        if role == "requests":
            result = role_requests(store, seconds, rate)
        elif role == "samples":
            result = role_samples(store, seconds)
        elif role == "reads":
            result = role_reads(store, seconds)
        elif role == "acked":
            result = role_acked(store, seconds)
        else:
            raise SystemExit(f"unknown role {role!r}")
    except Exception:  # noqa: BLE001 - reported to the parent, which fails the test
        print(json.dumps({"role": role, "crashed": traceback.format_exc()}), flush=True)
        raise SystemExit(1) from None
    print(json.dumps({"role": role, **result, **wait_stats(store)}), flush=True)


if __name__ == "__main__":
    main()
