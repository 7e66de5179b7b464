"""The DuckLake store (issue 20): `spot` from a venv with the ``ducklake`` extra, against the
suite's own PostgreSQL as the catalog and a directory as the shared data path."""

from __future__ import annotations

import re

import duckdb
import pytest

from spotinference.store.lake_sql import for_ducklake
from spotinference.store.migrations import bundled_migrations
from tests.conftest import run_spot
from tests.lake_fixtures import new_lake, schema, write_config

pytestmark = pytest.mark.slow


def normalised(macro: list) -> list:
    name, parameters, definition = macro
    return [name, parameters, re.sub(r"\s+", "", re.sub(r'"([A-Z]+)"', r"\1", definition))]


@pytest.fixture
def lake(postgres, tmp_path):
    return new_lake(postgres, tmp_path, tmp_path / "lake-home")


def test_migrate_gives_the_lake_the_file_stores_schema_and_twice_changes_nothing(lake_venv, lake, tmp_path):
    first = lake_venv.run_spot("db", "migrate", env=lake.env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied 0001_spool_ledger, ")
    assert f"schema is now v{len(bundled_migrations())}" in first.stdout

    file_config = write_config(tmp_path / "file.toml", tmp_path / "file-home")
    file_env = {"SPOT_CONFIG": str(file_config), "SPOT_HOME": str(tmp_path / "file-home")}
    assert lake_venv.run_spot("db", "migrate", env=file_env).returncode == 0
    on_lake, on_file = schema(lake_venv, lake.config, lake.env), schema(lake_venv, file_config, file_env)
    assert on_lake["columns"] == on_file["columns"]
    # The lake keeps a macro as DuckDB re-serialised it, which quotes type names ("DATE") and
    # spaces their arguments (DECIMAL(38, 0)): the same definition.
    assert [normalised(m) for m in on_lake["macros"]] == [normalised(m) for m in on_file["macros"]]
    assert [m[0] for m in on_lake["macros"]] == ["billing_increases", "spend_split"]
    assert on_lake["migrations"] == on_file["migrations"]  # the files' own checksums

    again = lake_venv.run_spot("db", "migrate", env=lake.env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"schema is current (v{len(bundled_migrations())})"
    assert schema(lake_venv, lake.config, lake.env) == on_lake
    status = lake_venv.run_spot("db", "status", "--json", env=lake.env)
    assert status.returncode == 0, status.stderr
    assert f"ducklake {lake.catalog}" in status.stdout


def test_the_catalog_password_never_appears_in_output_or_files(lake_venv, lake):
    for args in (["db", "migrate"], ["db", "status"], ["requests", "--json"], ["doctor"]):
        done = lake_venv.run_spot(*args, env={**lake.env, "SPOT_DEBUG": "1"})
        assert lake.password not in done.stdout + done.stderr, args
    wrong = "Wr0ng-" + lake.password[::-1]
    for debug in ("0", "1"):
        refused = lake_venv.run_spot("db", "status", env={**lake.env, "SPOT_STORE__PASSWORD": wrong, "SPOT_DEBUG": debug})
        assert refused.returncode == 1
        assert wrong not in refused.stdout + refused.stderr
        assert lake.password not in refused.stdout + refused.stderr
        assert f"the DuckLake catalog {lake.catalog} refused the password" in refused.stderr
    refused = lake_venv.run_spot("db", "status", env={**lake.env, "SPOT_STORE__PASSWORD": wrong})
    assert len(refused.stderr.strip().splitlines()) <= 2  # the line, and its hint
    assert "Traceback" not in refused.stderr
    for root in (lake.home, lake.data_path, lake.config.parent):
        for path in root.rglob("*"):
            if path.is_file():
                assert lake.password.encode() not in path.read_bytes(), path


def test_without_the_extra_a_lake_store_says_what_to_install(lake):
    # The test venv runs the duckdb the file store's users get, without the lake's extensions.
    done = run_spot("db", "status", env=lake.env)
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[0]
    assert "pip install 'spotinference[ducklake]'" in line
    assert f"duckdb {duckdb.__version__}" in line
    assert "Traceback" not in done.stderr


# -- the migrations' transform (spotinference/store/lake_sql.py) ------------------------------

def test_the_transform_drops_keys_whole_and_leaves_comments_and_strings():
    sql = """CREATE TABLE t (
    a VARCHAR PRIMARY KEY,   -- unique per writer: a comment keeps its words
    b VARCHAR NOT NULL UNIQUE,
    c VARCHAR DEFAULT 'PRIMARY KEY (x)',
    d INTEGER,
    CONSTRAINT t_u UNIQUE (b, c, d),
    PRIMARY KEY (a, d)
);
ALTER TABLE t ADD COLUMN e BOOLEAN DEFAULT false;
CREATE TABLE u (f BOOLEAN DEFAULT true, g VARCHAR, UNIQUE (f, g));"""
    assert for_ducklake(sql) == """CREATE TABLE t (
    a VARCHAR NOT NULL,   -- unique per writer: a comment keeps its words
    b VARCHAR NOT NULL ,
    c VARCHAR DEFAULT 'PRIMARY KEY (x)',
    d INTEGER
);
ALTER TABLE t ADD COLUMN e BOOLEAN DEFAULT 'false';
CREATE TABLE u (f BOOLEAN DEFAULT true, g VARCHAR);"""


def test_transformed_migrations_give_the_same_columns_on_plain_duckdb():
    def columns(transform):
        con = duckdb.connect()
        for migration in bundled_migrations():
            con.execute(transform(migration.sql))
        return con.execute("SELECT table_name, column_name, data_type, is_nullable, column_default "
                           "FROM information_schema.columns ORDER BY ALL").fetchall()

    original, transformed = columns(lambda s: s), columns(for_ducklake)
    assert [c[:4] for c in transformed] == [c[:4] for c in original]
    differing = {(c[0], c[1]) for c, o in zip(transformed, original) if c[4] != o[4]}
    assert differing <= {("billing_samples", "excluded")}  # 'false' for false: the same value
    con = duckdb.connect()
    con.execute(for_ducklake("CREATE TABLE x (a INTEGER); ALTER TABLE x ADD COLUMN e BOOLEAN DEFAULT false;"))
    con.execute("INSERT INTO x (a) VALUES (1)")
    assert con.execute("SELECT e FROM x").fetchone() == (False,)
