"""The same rows in a file store and in a DuckLake give the same reports (issue 20): `spot cost`
and `spot requests` from the ducklake venv, one fixed ledger fed to each through the Store API
and the spool (tests/workers/seed_ledger.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lake_fixtures import new_lake, write_config

pytestmark = pytest.mark.slow

SEED = Path(__file__).parent / "workers" / "seed_ledger.py"
WINDOW = ["--since", "2026-03-01T10:00", "--until", "2026-03-01T11:45"]
REPORTS = [
    ["cost", *WINDOW, "--json"],
    ["cost", *WINDOW, "--by", "tier", "--json"],
    ["cost", *WINDOW, "--by", "key", "--json"],
    ["cost", *WINDOW, "--by", "day", "--json"],
    ["requests", "--last", "500", "--json"],
    ["requests", "--last", "50", "--model", "m2", "--status", "5xx", "--json"],
]


def test_the_lake_reports_what_the_file_store_reports_for_the_same_rows(lake_venv, postgres, tmp_path):
    lake = new_lake(postgres, tmp_path, tmp_path / "lake-home")
    file_config = write_config(tmp_path / "file.toml", tmp_path / "file-home")
    file_env = {"SPOT_CONFIG": str(file_config), "SPOT_HOME": str(tmp_path / "file-home")}
    for config, env in ((file_config, file_env), (lake.config, lake.env)):
        seeded = lake_venv.run_python(SEED.read_text(), str(config), env=env)
        assert seeded.returncode == 0, seeded.stderr
        assert seeded.stdout.split() == ["300"]  # every spooled row flushed once
    assert not list((lake.home / "spool").glob("*.jsonl"))  # the lake's host flushed its spool

    for args in REPORTS:
        on_file, on_lake = (lake_venv.run_spot(*args, env=env) for env in (file_env, lake.env))
        assert on_file.returncode == 0 and on_lake.returncode == 0, (args, on_file.stderr, on_lake.stderr)
        from_file, from_lake = json.loads(on_file.stdout), json.loads(on_lake.stdout)
        assert from_lake == from_file, args
        assert from_file  # a report with something in it
    headline = json.loads(lake_venv.run_spot(*REPORTS[0], env=lake.env).stdout)
    assert headline["spend_usd"] > 0 and headline["completion_tokens"] > 0
    assert len(json.loads(lake_venv.run_spot(*REPORTS[4], env=lake.env).stdout)) == 300
