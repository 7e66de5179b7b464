"""Benchmark: rows per second flushed into a DuckLake from three hosts at once, against one file store.

    .venv/bin/python -m tests.benchmarks.lake_flush [--hosts 3] [--rate 1000] [--seconds 20] [--rate 0]

Run from the test venv: it starts its own PostgreSQL (tests/postgres_server.py) for the catalog,
builds the lake venv (tests/lake_env.py: duckdb 1.5.5 with the DuckLake extensions) and measures
both stores inside it, with the same duckdb, one store after the other.

Each "host" is a process with its own home and spool, writing request rows through the gateway's
SpoolWriter at --rate rows/s (0: as fast as it can) for --seconds, with the gateway's flush loop
(SpoolFlushProcess, one flush a --flush-interval) beside it; all hosts start together. The file
store run is the same writers sharing one home (one host, several gateway processes). A watcher
polls the store every --poll seconds and notes when each row first shows; the wait of a row is
that moment minus its spool write (its finished_at), so it includes up to one poll interval.
At the end every row must be there exactly once: count, distinct ids and the expected id set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from spotinference.config import load_settings
from spotinference.store import Store
from spotinference.store.flush_process import SpoolFlushProcess


def _config(path: Path, home: Path, store: str) -> Path:
    path.write_text(f'home = "{home}"\n\n[budget]\nenforce = false\n\n{store}')
    return path


def _store(config: Path) -> Store:
    settings, _ = load_settings(config)
    return Store.from_settings(settings)


def host(config: Path, name: str, rate: float, seconds: float, flush_interval_s: float) -> None:
    """One host: write rows for ``seconds`` at ``rate``, its flush loop running; then stop it
    (the gateway's stop: seal, end the loop, flush what remains) and print the rows written."""
    store = _store(config)
    writer = store.spool_writer("requests")
    flusher = SpoolFlushProcess(store, writer, interval_s=flush_interval_s)
    flusher.start()
    n = 0
    start = time.monotonic()
    try:
        while (elapsed := time.monotonic() - start) < seconds:
            if rate and n >= elapsed * rate:
                time.sleep(0.001)
                continue
            now = datetime.now(UTC)
            writer.append({
                "request_id": f"{name}-{n:08d}", "gateway_id": name, "key_id": "key-a", "model": "m1",
                "tier": "t1", "node": "node", "started_at": now - timedelta(milliseconds=20), "finished_at": now,
                "prompt_tokens": 100, "completion_tokens": 20, "http_status": 200, "streamed": False,
            })
            n += 1
            if n % 200 == 0:
                writer.rotate_if_due()
    finally:
        flusher.stop()
    print(n, writer._seq, flush=True)  # rows written, spool segments opened


class Watcher:
    """Polls the store for rows it has not seen yet and notes when each first showed."""

    def __init__(self, store: Store, poll_s: float) -> None:
        self.store, self.poll_s = store, poll_s
        self.seen: dict[str, float] = {}  # request_id -> wait in seconds
        self.visible_at: dict[str, float] = {}  # request_id -> when it first showed (epoch s)
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._poll()

    def _poll(self) -> None:
        with self.store.reading() as con:
            rows = con.execute("SELECT request_id, epoch(finished_at) FROM requests").fetchall()
        now = time.time()
        self.polls += 1
        for request_id, written in rows:
            if request_id not in self.seen:
                self.seen[request_id] = now - written
                self.visible_at[request_id] = now


def run(label: str, configs: list[Path], reader: Path, args: argparse.Namespace) -> dict[str, object]:
    store = _store(reader)
    store.migrate()
    watcher = Watcher(store, args.poll)
    watcher.start()
    started = time.time()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tests.benchmarks.lake_flush", "--host-worker", str(config), f"host{i}",
         str(args.rate), str(args.seconds), str(args.flush_interval)],
        stdout=subprocess.PIPE, text=True) for i, config in enumerate(configs)]
    outputs = [p.communicate(timeout=args.seconds + 900)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs), label
    written = {f"host{i}": int(out[0]) for i, out in enumerate(outputs)}
    segments = sum(int(out[1]) for out in outputs)
    watcher.stop()
    total = sum(written.values())
    expected = {f"{h}-{n:08d}" for h, count in written.items() for n in range(count)}
    with store.reading() as con:
        count, distinct = con.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchone()
        ids = {r[0] for r in con.execute("SELECT request_id FROM requests").fetchall()}
    assert count == distinct == total and ids == expected, (label, count, distinct, total, len(ids ^ expected))
    # Throughput: every row, from the first write to the moment the last one showed.
    last_visible = max(watcher.visible_at.values())
    waits = sorted(watcher.seen.values())
    return {
        "store": label, "hosts": len(configs), "rows": total, "segments": segments,
        "seconds": last_visible - started, "rows_per_s": total / (last_visible - started),
        "wait_p50_s": statistics.median(waits), "wait_p99_s": waits[int(0.99 * (len(waits) - 1))],
        "wait_max_s": waits[-1], "polls": watcher.polls,
    }


def measure(label: str, root: Path, args: argparse.Namespace) -> dict[str, object]:
    """One store's run, inside the lake venv; the catalog password comes in SPOT_STORE__PASSWORD."""
    if label == "file":
        config = _config(root / "file.toml", root / "file-home", "")
        return run("file", [config] * args.hosts, config, args)
    data = root / "lake-data"
    data.mkdir()
    lake = f'[store]\nkind = "ducklake"\ncatalog = "{args.catalog}"\ndata_path = "{data}"\n'
    configs = [_config(root / f"lake{i}.toml", root / f"lake-home{i}", lake) for i in range(args.hosts)]
    result = run("ducklake", configs, _config(root / "reader.toml", root / "reader-home", lake), args)
    result["parquet_files"] = len(list(data.rglob("*.parquet")))
    return result


def orchestrate(args: argparse.Namespace, options: list[str]) -> list[dict[str, object]]:
    """From the test venv: start PostgreSQL, build the lake venv, run each store's measurement in it."""
    from tests.lake_env import lake_env
    from tests.postgres_server import start_postgres

    python = str(lake_env().python)
    results = []
    server = start_postgres()
    try:
        for n, label in enumerate(["file", "ducklake"] if args.only is None else [args.only]):
            with tempfile.TemporaryDirectory(prefix="spot-lake-flush-") as tmp:
                catalog = server.create_database(f"flushbench{n}")
                done = subprocess.run(
                    [python, "-m", "tests.benchmarks.lake_flush", "--measure", label, "--dir", tmp,
                     "--catalog", catalog, *options],
                    capture_output=True, text=True, env={**os.environ, "SPOT_STORE__PASSWORD": server.password})
                if done.returncode != 0:
                    raise SystemExit(f"{label} run failed: {done.stderr[-3000:]}")
                results.append(json.loads(done.stdout.splitlines()[-1]))
    finally:
        server.remove()
    return results


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--host-worker"]:
        config, name, rate, seconds, interval = argv[1:6]
        host(Path(config), name, float(rate), float(seconds), float(interval))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000, help="rows/s per host; 0 = as fast as it can")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--flush-interval", type=float, default=1.0, help="the gateway's default: 1 s")
    parser.add_argument("--poll", type=float, default=0.25)
    parser.add_argument("--only", choices=["file", "ducklake"], default=None)
    parser.add_argument("--measure", choices=["file", "ducklake"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--catalog", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.dir, args), default=str))
        return
    options = ["--hosts", str(args.hosts), "--rate", str(args.rate), "--seconds", str(args.seconds),
               "--flush-interval", str(args.flush_interval), "--poll", str(args.poll)]
    results = orchestrate(args, options)
    print(f"{args.hosts} hosts, {args.rate:g} rows/s each offered (0 = unthrottled) for {args.seconds:g} s, "
          f"flush every {args.flush_interval:g} s, visibility polled every {args.poll:g} s (duckdb of the lake venv)")
    print(f"{'store':>9}{'rows':>9}{'segments':>10}{'s':>7}{'rows/s':>9}{'wait p50 s':>12}{'p99 s':>8}{'max s':>8}")
    for r in results:
        print(f"{r['store']:>9}{r['rows']:>9,}{r['segments']:>10,}{r['seconds']:>7.1f}{r['rows_per_s']:>9,.0f}"
              f"{r['wait_p50_s']:>12.2f}{r['wait_p99_s']:>8.2f}{r['wait_max_s']:>8.2f}"
              + (f"   ({r['parquet_files']} Parquet files in the lake)" if "parquet_files" in r else ""))
    print("every row arrived exactly once in each store (count = distinct ids = rows written, the same id set)")


if __name__ == "__main__":
    main()
