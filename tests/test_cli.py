"""The `spot` command as a user runs it: a real process, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spotinference import __version__
from spotinference.store.migrations import bundled_migrations

LATEST = len(bundled_migrations())

PRODUCT_GROUPS = [
    "init", "doctor", "db", "serve", "keys", "up", "down", "wake", "hibernate",
    "status", "logs", "ssh", "sample", "cost", "bench", "sim", "demo",
]


def test_help_lists_every_command_group(spot) -> None:
    result = spot("--help")
    assert result.returncode == 0
    listed = {line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert set(PRODUCT_GROUPS) <= listed


def test_version(spot) -> None:
    result = spot("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"spot {__version__}"


def test_no_command_is_left_planned(spot) -> None:
    # The "not built yet" scaffolding is gone (issue 19): no command says so, and `spot sample`
    # is the real sampler, not the stub that once stood in for it.
    result = spot("--help")
    assert result.returncode == 0 and "not built yet" not in result.stdout
    sample = spot("sample", "--help")
    assert sample.returncode == 0 and "not built yet" not in sample.stdout and "--json" in sample.stdout


@pytest.fixture
def quiet_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """doctor probes the gateway and the emulator at their configured addresses: point those at
    ports where nothing listens, so a demo running elsewhere on this machine cannot change it."""
    from tests.servers import free_port

    monkeypatch.setenv("SPOT_GATEWAY__PORT", str(free_port()))
    monkeypatch.setenv("SPOT_PROVIDERS__SIM__BASE_URL", f"http://127.0.0.1:{free_port()}/v1")


def test_doctor_on_the_embedded_default_passes(spot, home: Path, quiet_ports: None) -> None:
    result = spot("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("installation", "config", "data directory", "database", "provider sim", "ssh key"):
        assert name in result.stdout
    assert "✗" not in result.stdout

    report = json.loads(spot("doctor", "--json").stdout)
    assert report["ok"] is True
    database = next(c for c in report["checks"] if c["name"] == "database")
    assert database["detail"].startswith(f"schema v{LATEST} of {LATEST}")
    assert (home / "spot.duckdb").exists()


def test_doctor_reports_a_missing_provider_key_with_its_fix(spot) -> None:
    Path("spot.toml").write_text(
        '[providers.hs]\nkind = "hyperstack"\n[ssh]\nkey_path = "/nonexistent/id_ed25519"\n'
        '[tiers.q]\nprovider = "hs"\nflavor = "n3-H100x1"\nenvironment = "e"\nmodel = "q"\n'
    )
    result = spot("doctor", "--json")
    assert result.returncode == 1
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["provider hs"]["ok"] is False
    assert "SPOT_PROVIDERS__HS__API_KEY" in checks["provider hs"]["fix"]
    assert checks["ssh key"]["ok"] is False and "/nonexistent/id_ed25519" in checks["ssh key"]["detail"]

    secret = "hs-secret-value-777"
    result = spot("doctor", "--json", env={"SPOT_PROVIDERS__HS__API_KEY": secret})
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["provider hs"]["ok"] is True
    assert secret not in result.stdout + result.stderr


def test_a_bad_config_is_one_line_exit_2_and_a_traceback_only_when_debugging(spot) -> None:
    Path("spot.toml").write_text('[gateway]\nport = "eighty"\n')
    result = spot("db", "status")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "spot.toml" in lines[0] and "gateway.port = 'eighty'" in lines[0] and "expected a valid integer" in lines[0]
    assert "Traceback" not in result.stderr

    debug = spot("db", "status", env={"SPOT_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_the_config_flag_wins_and_a_missing_file_is_named(spot, tmp_path: Path) -> None:
    result = spot("--config", str(tmp_path / "absent.toml"), "doctor", "--json")
    assert result.returncode == 1
    config = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "config")
    assert config["ok"] is False and "absent.toml (from --config) does not exist" in config["detail"]
    assert "spot init" in config["fix"]


def test_init_writes_a_starter_config_and_refuses_to_overwrite(spot, quiet_ports: None) -> None:
    first = spot("init")
    assert first.returncode == 0 and "wrote" in first.stdout
    text = Path("spot.toml").read_text()
    assert "[tiers.demo]" in text
    assert spot("doctor").returncode == 0  # the written file is picked up as ./spot.toml and valid

    again = spot("init", "--example", "hyperstack")
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    assert Path("spot.toml").read_text() == text

    forced = spot("init", "--example", "hyperstack", "--force", "--json")
    assert forced.returncode == 0 and json.loads(forced.stdout)["example"] == "hyperstack"
    assert "[tiers.llama70-spot]" in Path("spot.toml").read_text()


def test_db_status_and_migrate_report_the_schema(spot, home: Path) -> None:
    migrate = spot("db", "migrate", "--json")
    assert migrate.returncode == 0
    applied = json.loads(migrate.stdout)["applied"]
    assert applied[:3] == ["0001_spool_ledger", "0002_requests", "0003_billing"] and len(applied) == LATEST
    assert json.loads(spot("db", "migrate", "--json").stdout)["applied"] == []

    status = json.loads(spot("db", "status", "--json").stdout)
    assert status["version"] == status["latest"] == LATEST and status["pending"] == []
    assert {t["table_name"] for t in status["tables"]} >= {"requests", "billing_samples", "sample_runs"}
    assert status["database"] == str(home / "spot.duckdb")

    table = spot("db", "status")
    assert table.returncode == 0 and f"schema    v{LATEST} of {LATEST}" in table.stdout and "requests" in table.stdout


def test_db_flush_copies_spooled_rows(spot, home: Path) -> None:
    from spotinference.store import Store
    from tests.workers.store_load import request_row

    with Store(home).spool_writer("requests") as writer:
        writer.append(request_row("r-1"))
        writer.append(request_row("r-2"))
    result = json.loads(spot("db", "flush", "--json").stdout)
    assert result["rows"] == 2 and result["rejected"] == []
    rows = {t["table_name"]: t["row_count"] for t in json.loads(spot("db", "status", "--json").stdout)["tables"]}
    assert rows["requests"] == 2


def test_an_unknown_option_is_a_usage_error(spot) -> None:
    result = spot("db", "status", "--nope")
    assert result.returncode == 2 and "No such option" in result.stderr


def test_ctrl_c_during_a_database_query_exits_as_interrupted_not_as_an_internal_error(tmp_path: Path) -> None:
    # DuckDB turns the KeyboardInterrupt of a Ctrl-C into RuntimeError("Query interrupted"); `spot
    # up` interrupted while recording a node's state once exited 70 ("this is a bug in spot").
    # The real entry point, a real DuckDB query, a real SIGINT; only the command is stood in for.
    # One DuckDB thread: with more, on a loaded machine the calling thread can wait on the workers
    # without checking for signals, and this endless query would then never notice the Ctrl-C
    # (half of 12 runs beside two busy loops; 12 of 12 noticed it with one thread).
    script = tmp_path / "interrupt.py"
    script.write_text(
        "import os, signal, threading\n"
        "import duckdb\n"
        "import spotinference_cli.main as main\n"
        "def long_query():\n"
        "    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
        "    con = duckdb.connect(config={'threads': 1})\n"
        "    con.sql('SELECT count(*) FROM range(10000000000000) a').fetchall()\n"
        "main.app = long_query\n"
        "main.run()\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "SPOT_DEBUG"})
    assert result.returncode == 130, result.stderr
    assert result.stderr.startswith("interrupted (RuntimeError: Query interrupted)")
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
