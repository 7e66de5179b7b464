"""The access protocol under real concurrency: three OS processes, one data directory."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from spotinference.store import Store
from tests.workers.harness import ROOT, run_side_by_side, worker_command, worker_env

pytestmark = pytest.mark.slow


def test_gateway_sampler_and_reader_share_the_database_for_20_seconds(home: Path) -> None:
    reports = run_side_by_side(home, seconds=20, request_rate=250)

    requests, samples, reads = reports["requests"], reports["samples"], reports["reads"]
    assert requests["rate"] >= 200, requests
    assert samples["runs"] >= 19, samples
    assert reads["failures"] == 0, reads["errors"]
    assert reads["reads"] > 100, reads
    assert reads["went_backwards"] == 0, "a reader saw the request count shrink"

    store = Store(home)
    store.flush()
    with store.reading() as con:
        (rows, distinct) = con.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchone()
        (runs,) = con.execute("SELECT count(*) FROM sample_runs").fetchone()
        (sample_rows,) = con.execute("SELECT count(*) FROM billing_samples").fetchone()
    assert rows == distinct == requests["rows"]
    assert runs == samples["runs"]
    assert sample_rows == samples["samples"]
    assert store.spool_files() == (0, 0)


def test_rows_acknowledged_before_a_kill_9_are_all_in_the_database(home: Path) -> None:
    # Its own session, so the kill takes the writer and its flush process together, as a
    # crash of the whole gateway would.
    proc = subprocess.Popen(
        worker_command("acked", 60), env=worker_env(home), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True,
    )
    acked: list[str] = []
    reader = threading.Thread(target=lambda: acked.extend(
        line.split()[1] for line in proc.stdout if line.startswith("acked ")  # type: ignore[union-attr]
    ))
    reader.start()
    # Kill it once some rows are in DuckDB (its flusher ran) and others are still in the spool.
    # Segments rotate every second and the flusher runs every 0.2 s, so after 2.5 s of writing
    # both kinds exist.
    deadline = time.monotonic() + 60
    while not acked and time.monotonic() < deadline:
        time.sleep(0.01)
    writing_since = time.monotonic()
    while (len(acked) < 3000 or time.monotonic() - writing_since < 2.5) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 3000

    store = Store(home)
    result = store.flush()
    assert result.rejected == []
    assert result.rows > 0, "the kill should leave rows in the spool, not only in DuckDB"
    with store.reading() as con:
        stored = {row[0] for row in con.execute("SELECT request_id FROM requests").fetchall()}
        (rows,) = con.execute("SELECT count(*) FROM requests").fetchone()
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} acknowledged rows lost, e.g. {sorted(missing)[:3]}"
    assert rows == len(stored), "a row was copied twice"
    assert rows > result.rows, "the writer's flush process should have copied rows before the kill"
    assert store.spool_files() == (0, 0)
