"""Benchmark: how long does each kind of spot process wait for the shared database?

    .venv/bin/python -m tests.benchmarks.store_contention [SECONDS] [REQUEST_ROWS_PER_S]

Runs the gateway-like writer, the once-a-second sampler and a looping reader as three processes
on one data directory (the same harness as tests/test_store_concurrency.py) and prints, per
process, the median, P99 and maximum wait for the database lock. The promise is that no process
waits more than a second for another.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.workers.harness import run_side_by_side


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 250.0
    with tempfile.TemporaryDirectory() as tmp:
        reports = run_side_by_side(Path(tmp), seconds, rate)
    print(f"{seconds:g} s, request writer at {rate:g} rows/s")
    print(f"{'process':<10}{'work':>24}{'lock waits':>12}{'median ms':>11}{'p99 ms':>9}{'max ms':>9}")
    work = {
        "requests": lambda r: f"{r['rows']} rows ({r['rate']:.0f}/s)",
        "samples": lambda r: f"{r['runs']} runs",
        "reads": lambda r: f"{r['reads']} reads, {r['failures']} failed",
    }
    for role, report in reports.items():
        print(
            f"{role:<10}{work[role](report):>24}{report['lock_acquisitions']:>12}"
            f"{report['lock_wait_median_ms']:>11.2f}{report['lock_wait_p99_ms']:>9.2f}"
            f"{report['lock_wait_max_ms']:>9.2f}"
        )


if __name__ == "__main__":
    main()
