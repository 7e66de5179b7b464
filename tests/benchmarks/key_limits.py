"""Benchmark: what a key's limits cost a request in the gateway's own time (admit + settle).

    .venv/bin/python -m tests.benchmarks.key_limits [--requests N]

Runs ``KeyLimits.admit`` and ``settle`` (the two flock-guarded updates of the shared table that
a request of a key with rpm, tpm and max-concurrent limits costs) on a real data directory: in
one process, then in two processes at once on the same key (two gateway workers contending for
the lock); then the same for a key that also has daily and monthly budgets (key_budgets.py: the
body's output cap read with ``json.loads``, a reservation and a settlement in a second table),
priced from a real ledger (a billing sample and a request row) read by ``KeyBudgets.refresh``.
Prints microseconds per request at P50, P99 and the mean.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from spotinference.gateway.key_budgets import KeyBudgets
from spotinference.gateway.key_limits import KeyLimits
from spotinference.gateway.requests import CHAT, ClientRequest
from spotinference.key_settings import KeySettings
from spotinference.keys import KeyRing, create_key
from spotinference.store import Store
from tests.test_cost_queries import Seed

BODY = (b'{"model":"tiny-chat","messages":[{"role":"system","content":"You are a helpful assistant."},'
        b'{"role":"user","content":"Write a haiku about spot instances."}],"max_tokens":256,"stream":true}')
REQUEST = ClientRequest(CHAT, "tiny-chat", True, BODY, None)


def timed(home: str, key_id: str, requests: int) -> list[float]:
    store = Store(Path(home))
    keys = KeyRing(store)
    budgets = KeyBudgets(keys, store, Path(home) / "gateway")
    budgets.refresh()
    limits = KeyLimits(keys, Path(home) / "gateway", budgets)
    took = []
    for _ in range(requests):
        started = time.perf_counter()
        ticket = limits.admit(key_id, REQUEST, "t1")
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
        store = Store(Path(home))
        limited = KeySettings(rpm=10**9, tpm=10**15, max_concurrent=10**6)
        for title, settings in (
            ("a key with rpm, tpm and max-concurrent limits", limited),
            ("the same limits and daily + monthly budgets",
             replace(limited, daily_usd=Decimal(10**9), monthly_usd=Decimal(10**9))),
        ):
            new = create_key(store, f"bench-{len(title)}", settings)
            _priced_ledger(store)
            print(f"admit + settle per request, {title}")
            report("one process", timed(home, new.key_id, args.requests))
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                both = pool.starmap(timed, [(home, new.key_id, args.requests)] * 2)
            report("two processes, same key, at once", both[0] + both[1])


def _priced_ledger(store: Store) -> None:
    """A billing sample and a request in the last hour: the tier has an invoice-true price."""
    seed = Seed(store)
    now = datetime.now(UTC)
    for at, total in ((now - timedelta(minutes=30), "0"), (now - timedelta(minutes=1), "1")):
        seed.sample(seed.run(at), at, f"vm-{at.timestamp()}", total)
    seed.request(now - timedelta(minutes=10), 500_000, 500_000, key="warm-up")
    seed.write()


if __name__ == "__main__":
    main()
