"""Benchmark: what a key's limits cost a request in the gateway's own time (admit + settle).

    .venv/bin/python -m tests.benchmarks.key_limits [--requests N]

Runs ``KeyLimits.admit`` and ``settle`` (the two flock-guarded updates of the shared table that
a request of a key with rpm, tpm and max-concurrent limits costs) on a real data directory: in
one process, then in two processes at once on the same key (two gateway workers contending for
the lock). Prints microseconds per request at P50, P99 and the mean.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

from spotinference.gateway.key_limits import KeyLimits
from spotinference.key_settings import KeySettings
from spotinference.keys import KeyRing, create_key
from spotinference.store import Store


def timed(home: str, key_id: str, requests: int) -> list[float]:
    limits = KeyLimits(KeyRing(Store(Path(home))), Path(home) / "gateway")
    took = []
    for _ in range(requests):
        started = time.perf_counter()
        ticket = limits.admit(key_id)
        assert ticket is not None
        limits.settle(ticket, key_id, 10, 20)
        took.append((time.perf_counter() - started) * 1e6)
    return took


def report(label: str, took: list[float]) -> None:
    ordered = sorted(took)
    print(f"{label:<34} P50 {ordered[len(ordered) // 2]:6.1f} µs   P99 {ordered[int(len(ordered) * 0.99)]:6.1f} µs   "
          f"mean {statistics.fmean(took):6.1f} µs   n {len(took)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        new = create_key(Store(Path(home)), "bench", KeySettings(rpm=10**9, tpm=10**15, max_concurrent=10**6))
        print("admit + settle per request, a key with rpm, tpm and max-concurrent limits")
        report("one process", timed(home, new.key_id, args.requests))
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            both = pool.starmap(timed, [(home, new.key_id, args.requests)] * 2)
        report("two processes, same key, at once", both[0] + both[1])


if __name__ == "__main__":
    main()
