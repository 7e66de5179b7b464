"""Benchmark: `spot cost --days 7` and `--days 365` on a DuckLake against a file store holding the same rows.

    .venv/bin/python -m tests.benchmarks.lake_cost_scale [--rows 10000000] [--days 365] [--resources 200]

Run from the test venv: it starts its own PostgreSQL (tests/postgres_server.py) for the catalog
and builds the lake venv (tests/lake_env.py), then, inside the lake venv (duckdb 1.5.5, so both
stores run the same duckdb): generates the file store with tests/benchmarks/cost_data.py (a
sampler run a minute for --days days, one billing row per resource per run, --rows request rows
over the span), moves it into the lake with `spot db export --to ducklake` (the operator's path,
counted and checked), and times what `spot cost` runs (spotinference.costs.report, with "now" a
minute before the last sample as cost_scale.py does) on each store: the one-off roll-up of the
whole history, then the 7-day and the min(365, --days)-day report, twice each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

FILE_CONFIG = 'home = "{home}"\n\n[budget]\nenforce = false\n'
LAKE_STORE = '\n[store]\nkind = "ducklake"\ncatalog = "{catalog}"\ndata_path = "{data}"\n'


def _timed(fn):  # noqa: ANN001, ANN202
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def time_reports(store, days: int) -> dict[str, object]:  # noqa: ANN001 - a Store
    from spotinference.costs import report, rollup, trailing_window
    from tests.benchmarks import cost_data

    now = cost_data.EPOCH + timedelta(days=days, minutes=-1)
    result: dict[str, object] = {}
    result["rollup_s"], result["rolled_days"] = _timed(lambda: rollup.refresh(store, now))
    result["rollup_again_s"], result["rolled_again_days"] = _timed(lambda: rollup.refresh(store, now))
    for window_days in (7, min(365, days)):
        window = trailing_window(window_days, now)
        times, spends = [], []
        for _ in range(2):
            seconds, rep = _timed(lambda w=window: report(store, w, now=now))
            times.append(seconds)
            spends.append(str(rep.spend_usd))
        result[f"d{window_days}"] = times
        result[f"d{window_days}_spend"] = spends
    return result


def measure(args: argparse.Namespace) -> dict[str, object]:
    """Inside the lake venv: build, export, time; the catalog password is in SPOT_STORE__PASSWORD."""
    from spotinference.config import load_settings
    from spotinference.store import Store
    from tests.benchmarks import cost_data

    root = args.dir
    home, data = root / "home", root / "lake-data"
    data.mkdir()
    file_config = root / "file.toml"
    file_config.write_text(FILE_CONFIG.format(home=home))
    lake_config = root / "lake.toml"
    lake_config.write_text(FILE_CONFIG.format(home=home) + LAKE_STORE.format(catalog=args.catalog, data=data))
    out: dict[str, object] = {}
    out["build_s"], _ = _timed(lambda: cost_data.build(home, days=args.days, resources=args.resources,
                                                       request_rows=args.rows))
    spot = Path(sys.executable).with_name("spot")
    env = {**os.environ, "SPOT_CONFIG": str(lake_config), "SPOT_HOME": str(home)}
    out["export_s"], done = _timed(lambda: subprocess.run([str(spot), "db", "export", "--to", "ducklake"],
                                                         capture_output=True, text=True, env=env))
    if done.returncode != 0:
        raise SystemExit(f"spot db export failed: {done.stderr}")
    file_store = Store(home)
    lake_settings, _ = load_settings(lake_config)
    lake_store = Store.from_settings(lake_settings)
    for name, store in (("file", file_store), ("ducklake", lake_store)):
        with store.reading() as con:
            out[f"{name}_requests"], = con.execute("SELECT count(*) FROM requests").fetchone()
            out[f"{name}_samples"], = con.execute("SELECT count(*) FROM billing_samples").fetchone()
        out[name] = time_reports(store, args.days)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--resources", type=int, default=200)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--catalog", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args), default=str))
        return
    from tests.lake_env import lake_env
    from tests.postgres_server import start_postgres

    server = start_postgres()
    try:
        with tempfile.TemporaryDirectory(prefix="spot-lake-cost-") as tmp:
            done = subprocess.run(
                [str(lake_env().python), "-m", "tests.benchmarks.lake_cost_scale", "--measure", "--dir", tmp,
                 "--catalog", server.create_database("costbench"), "--rows", str(args.rows),
                 "--days", str(args.days), "--resources", str(args.resources)],
                capture_output=True, text=True, env={**os.environ, "SPOT_STORE__PASSWORD": server.password})
    finally:
        server.remove()
    if done.returncode != 0:
        raise SystemExit(f"the measurement failed: {done.stderr[-3000:]}")
    r = json.loads(done.stdout.splitlines()[-1])
    span = min(365, args.days)
    print(f"{r['file_requests']:,} request rows, {r['file_samples']:,} billing rows ({args.days} days × "
          f"{args.resources} resources); build {r['build_s']:.1f} s, `spot db export --to ducklake` {r['export_s']:.1f} s")
    assert (r["file_requests"], r["file_samples"]) == (r["ducklake_requests"], r["ducklake_samples"])
    print(f"{'store':>9}{'roll-up s (days)':>18}{'again s (days)':>16}{'7 d 1st/2nd s':>16}{f'{span} d 1st/2nd s':>18}")
    for name in ("file", "ducklake"):
        t = r[name]
        print(f"{name:>9}{t['rollup_s']:>11.2f} ({t['rolled_days']:>3}){t['rollup_again_s']:>9.2f} ({t['rolled_again_days']:>3})"
              f"{t['d7'][0]:>9.2f} /{t['d7'][1]:>5.2f}{t[f'd{span}'][0]:>11.2f} /{t[f'd{span}'][1]:>5.2f}")
    same = all(r["file"][k] == r["ducklake"][k] for k in ("d7_spend", f"d{span}_spend"))
    print(f"spend 7 d {r['file']['d7_spend'][0]} / {span} d {r['file'][f'd{span}_spend'][0]} USD: "
          f"{'the same on both stores' if same else 'DIFFERENT: ' + json.dumps({k: r[k] for k in ('file', 'ducklake')})}")


if __name__ == "__main__":
    main()
