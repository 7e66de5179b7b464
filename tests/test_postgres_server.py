"""The suite's own PostgreSQL (the DuckLake catalog's server) starts, authenticates by password
only, and survives a restart with its data: the multi-host drills depend on all three."""

from __future__ import annotations

import subprocess


def test_a_database_keeps_its_rows_across_a_restart_and_refuses_a_wrong_password(postgres):
    postgres.create_database("restart_check")
    postgres.sql("CREATE TABLE t (n int); INSERT INTO t VALUES (41), (1)", "restart_check")
    postgres.restart()
    assert postgres.sql("SELECT sum(n) FROM t", "restart_check") == "42"

    wrong = subprocess.run(
        [str(postgres.bin_dir / "psql"), "-h", postgres.host, "-p", str(postgres.port), "-U", postgres.user,
         "-d", "restart_check", "-c", "SELECT 1"],
        capture_output=True, text=True, env={"PGPASSWORD": "not-the-password", "PATH": "/usr/bin:/bin"},
    )
    assert wrong.returncode != 0
    assert "password authentication failed" in wrong.stderr
