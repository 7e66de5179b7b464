"""Benchmark: how long does the cost report take on a year of data?

    .venv/bin/python -m tests.benchmarks.cost_scale [--rows 1000000 10000000 100000000]
        [--resources 200] [--days 365] [--dir DIR]

Builds one data directory per request-row count (generated inside DuckDB, tests/benchmarks/
cost_data.py): a sampler run every minute for --days days, one billing row per resource per run
(365 days × 200 resources ≈ 105 M rows), and --rows request rows over the same span. Then times
what `spot cost --days 7` and `spot cost --days 365` run (spotinference.costs.report: the daily
roll-up check, the headline, coverage and gaps), each twice, plus the one-off roll-up of the whole
history (what the first report after an upgrade pays).

Disk: about 1.3 GB for the samples plus ~25 bytes per request row, per directory (the 100 M row
directory is ~4 GB). Without --dir the directories live in a temporary directory removed at the
end. Targets on these 2-core machines: ≤ 1 s for 7 days and ≤ 10 s for 365 days at 100 M rows.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from spotinference.costs import report, rollup, trailing_window
from spotinference.store import Store
from tests.benchmarks import cost_data


def _timed(fn):  # noqa: ANN001, ANN202
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def bench_one(home: Path, rows: int, resources: int, days: int, base: Path | None) -> dict[str, object]:
    if base is not None:  # reuse the samples already generated: copy, then add this size's requests
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy(base / "spot.duckdb", home / "spot.duckdb")
        build_s, _ = _timed(lambda: cost_data.add_requests(Store(home), days=days, request_rows=rows))
    else:
        build_s, _ = _timed(lambda: cost_data.build(home, days=days, resources=resources, request_rows=rows))
    store = Store(home)
    # "now": a minute before the last generated sample; the last day is still raw, as in real life.
    now = cost_data.EPOCH + timedelta(days=days, minutes=-1)
    rollup_s, rolled = _timed(lambda: rollup.refresh(store, now))
    result: dict[str, object] = {"rows": rows, "build_s": build_s, "rollup_s": rollup_s, "rolled_days": rolled}
    for window_days in (7, min(365, days)):
        window = trailing_window(window_days, now)
        times = []
        for _ in range(2):
            seconds, rep = _timed(lambda w=window: report(store, w, now=now))
            times.append(seconds)
        result[f"d{window_days}"] = times
        result[f"d{window_days}_spend"] = rep.spend_usd
    with store.reading() as con:
        result["billing_rows"] = con.execute("SELECT count(*) FROM billing_samples").fetchone()[0]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000, 100_000_000])
    parser.add_argument("--resources", type=int, default=200)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--dir", type=Path, default=None, help="where to build (kept); default: a temp dir, removed")
    args = parser.parse_args(argv)
    samples = args.days * 1440 * args.resources
    print(f"building: {args.days} days × {args.resources} resources ≈ {samples / 1e6:.0f} M billing rows; "
          f"request rows {', '.join(f'{r:,}' for r in args.rows)}. Disk: ≈{samples * 12 / 1e9 + sum(args.rows) * 25 / 1e9:.1f} GB.",
          file=sys.stderr)
    tmp = None
    root = args.dir or Path(tmp := tempfile.mkdtemp(prefix="spot-cost-scale-"))
    try:
        results = []
        base = None
        for rows in args.rows:
            home = root / f"rows-{rows}"
            shutil.rmtree(home, ignore_errors=True)
            results.append(bench_one(home, rows, args.resources, args.days, base))
            base = base or home
            print(f"  done {rows:,} rows", file=sys.stderr, flush=True)
        span = min(365, args.days)
        print(f"{'request rows':>14}{'billing rows':>14}{'build s':>9}{'roll-up s':>11}"
              f"{'7 d (1st/2nd) s':>18}{f'{span} d (1st/2nd) s':>20}")
        for r in results:
            d7, dy = r["d7"], r[f"d{span}"]
            print(f"{r['rows']:>14,}{r['billing_rows']:>14,}{r['build_s']:>9.1f}{r['rollup_s']:>11.1f}"
                  f"{d7[0]:>10.2f} /{d7[1]:>5.2f}{dy[0]:>12.2f} /{dy[1]:>5.2f}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
