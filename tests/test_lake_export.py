"""`spot db export --to ducklake` (issue 20): a file store written by the test venv's duckdb (what
file-store users run) moved into a lake by the ducklake venv's spot, every row counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.conftest import run_spot
from tests.lake_fixtures import new_lake

pytestmark = pytest.mark.slow

SEED = Path(__file__).parent / "workers" / "seed_ledger.py"
SPOOL_FIVE = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from spotinference.store import Store
writer = Store(Path(sys.argv[1])).spool_writer("requests")
for n in range(5):
    t = datetime(2026, 3, 1, 11, 50, n, tzinfo=UTC)
    writer.append({"request_id": f"late-{n}", "gateway_id": "gw-1", "key_id": "key-a", "model": "m1",
                   "started_at": t, "finished_at": t, "prompt_tokens": 10, "completion_tokens": 5,
                   "http_status": 200})
writer.close()  # sealed, not flushed: the export must take these too
"""


def file_counts(home: Path) -> dict[str, int]:
    with duckdb.connect(str(home / "spot.duckdb"), read_only=True) as con:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE table_name <> 'schema_migrations'").fetchall()]
        return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def seed_file_store(python: str, lake, tmp_path: Path) -> Path:
    """The fixed ledger, a key, and five rows still spooled, in a file store in the lake's home;
    returns the config without [store]."""
    file_config = tmp_path / "file.toml"
    file_config.write_text(lake.config.read_text().split("[store]")[0])
    env = {**os.environ, "SPOT_CONFIG": str(file_config), "SPOT_HOME": str(lake.home)}
    seeded = subprocess.run([python, str(SEED), str(file_config)], capture_output=True, text=True, timeout=300, env=env)
    assert seeded.returncode == 0, seeded.stderr
    spot = Path(python).parent / "spot"
    created = subprocess.run([str(spot), "keys", "create", "team-a"], capture_output=True, text=True, env=env)
    assert created.returncode == 0, created.stderr
    spooled = subprocess.run([python, "-c", SPOOL_FIVE, str(lake.home)], capture_output=True, text=True, env=env)
    assert spooled.returncode == 0, spooled.stderr
    return file_config


def cost(spot, env: dict[str, str]) -> dict:
    done = spot("cost", "--since", "2026-03-01T10:00", "--until", "2026-03-01T12:00", "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


COUNT_SCRIPT = """
import json, sys
from pathlib import Path
from spotinference.config import load_settings
from spotinference.store import Store
settings, _ = load_settings(Path(sys.argv[1]))
with Store.from_settings(settings).reading() as con:
    tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = "
                                        "current_database() AND table_name <> 'schema_migrations'").fetchall()]
    print(json.dumps({t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}))
"""


def lake_counts(lake_venv, lake) -> dict[str, int]:
    done = lake_venv.run_python(COUNT_SCRIPT, str(lake.config), env=lake.env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def check_moved(lake_venv, lake, exported: dict[str, int], file_cost: dict) -> None:
    after = file_counts(lake.home)
    assert after["requests"] == 305  # the five spooled rows were flushed into the file first
    assert after["api_keys"] == 1 and after["billing_samples"] > 0
    assert exported == after  # every table, every row
    assert lake_counts(lake_venv, lake) == after
    from_lake = cost(lake_venv.run_spot, lake.env)
    assert from_lake["spend_usd"] == file_cost["spend_usd"] > 0
    assert from_lake["completion_tokens"] == file_cost["completion_tokens"] > 0
    keys = lake_venv.run_spot("keys", "list", "--json", env=lake.env)
    assert keys.returncode == 0 and "team-a" in keys.stdout

    again = lake_venv.run_spot("db", "export", "--to", "ducklake", env=lake.env)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "the lake already holds rows (" in again.stderr
    assert lake_counts(lake_venv, lake) == after  # nothing changed


def test_a_file_store_from_the_ducklake_venv_moves_straight_into_the_lake(lake_venv, postgres, tmp_path):
    lake = new_lake(postgres, tmp_path, tmp_path / "home")
    file_config = seed_file_store(str(lake_venv.python), lake, tmp_path)
    file_env = {"SPOT_CONFIG": str(file_config), "SPOT_HOME": str(lake.home)}
    file_cost = cost(lake_venv.run_spot, file_env)  # flushes the five spooled rows into the file

    done = lake_venv.run_spot("db", "export", "--to", "ducklake", "--json", env=lake.env)
    assert done.returncode == 0, done.stderr
    exported = {t["table"]: t["rows"] for t in json.loads(done.stdout)["tables"]}
    check_moved(lake_venv, lake, exported, file_cost)


def test_a_file_store_from_a_newer_duckdb_moves_through_parquet(lake_venv, postgres, tmp_path):
    lake = new_lake(postgres, tmp_path, tmp_path / "home")
    file_config = seed_file_store(sys.executable, lake, tmp_path)  # the test venv's duckdb 2.x
    file_env = {"SPOT_CONFIG": str(file_config), "SPOT_HOME": str(lake.home)}

    refused = lake_venv.run_spot("db", "export", "--to", "ducklake", env=lake.env)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "was written by a newer DuckDB" in refused.stderr
    assert "spot db export --to parquet --dir DIR" in refused.stderr
    assert set(lake_counts(lake_venv, lake).values()) == {0}

    file_cost = cost(run_spot, file_env)  # before the export: a report rolls up settled days
    parquet = tmp_path / "moving"
    written = run_spot("db", "export", "--to", "parquet", "--dir", str(parquet), "--json", env=file_env)
    assert written.returncode == 0, written.stderr
    done = lake_venv.run_spot("db", "export", "--to", "ducklake", "--from", str(parquet), "--json", env=lake.env)
    assert done.returncode == 0, done.stderr
    exported = {t["table"]: t["rows"] for t in json.loads(done.stdout)["tables"]}
    assert exported == {t["table"]: t["rows"] for t in json.loads(written.stdout)["tables"]}
    check_moved(lake_venv, lake, exported, file_cost)


def test_export_wants_a_lake_in_the_config(lake_venv, tmp_path):
    config = tmp_path / "file.toml"
    config.write_text("[budget]\nenforce = false\n")
    done = lake_venv.run_spot("db", "export", "--to", "ducklake", env={"SPOT_CONFIG": str(config)})
    assert done.returncode == 2
    assert done.stderr.strip() == ('error: spot db export --to ducklake needs the lake in the config: '
                                   '[store] kind = "ducklake" with catalog and data_path')
    wrong = lake_venv.run_spot("db", "export", "--to", "csv", env={"SPOT_CONFIG": str(config)})
    assert wrong.returncode == 2 and "expected ducklake or parquet" in wrong.stderr
    no_dir = lake_venv.run_spot("db", "export", "--to", "parquet", env={"SPOT_CONFIG": str(config)})
    assert no_dir.returncode == 2 and "--to parquet needs --dir DIR" in no_dir.stderr
