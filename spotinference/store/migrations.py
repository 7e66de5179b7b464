"""Numbered .sql migrations, each applied in one transaction together with its record."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

import duckdb

from ..errors import SchemaTooNewError, StoreError
from .lake_sql import for_ducklake

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        VARCHAR NOT NULL,
    checksum    VARCHAR NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]


def bundled_migrations() -> list[Migration]:
    found = []
    for entry in (resources.files("spotinference.store") / "migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise StoreError(f"bundled migrations are not numbered 1..n without gaps: {versions}")
    return found


def applied_versions(con: duckdb.DuckDBPyConnection) -> list[int]:
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'schema_migrations' "
        "AND database_name = current_database()"
    ).fetchone()
    if not exists or not exists[0]:
        return []
    return [row[0] for row in con.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()]


def pending(con: duckdb.DuckDBPyConnection, migrations: list[Migration]) -> list[Migration]:
    applied = applied_versions(con)
    latest = migrations[-1].version if migrations else 0
    if applied and max(applied) > latest:
        raise SchemaTooNewError(
            f"the database is at schema version {max(applied)}, newer than this spot knows ({latest})",
            hint="upgrade spotinference, or point SPOT_HOME at another data directory",
        )
    done = set(applied)
    return [m for m in migrations if m.version not in done]


def apply(con: duckdb.DuckDBPyConnection, migrations: list[Migration], *, for_lake: bool = False) -> list[Migration]:
    """Apply what is pending; each migration and its ledger row commit together or not at all.

    On a DuckLake (``for_lake``) the same files run without their PRIMARY KEY and UNIQUE
    constraints, which DuckLake cannot hold, and with quoted boolean defaults (``lake_sql``); the recorded checksum is the file's."""
    def sql(text: str) -> str:
        return for_ducklake(text) if for_lake else text

    con.execute(sql(_LEDGER))
    applied = []
    for migration in pending(con, migrations):
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql(migration.sql))
            con.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?, ?)",
                [migration.version, migration.name, migration.checksum, datetime.now(UTC)],
            )
            con.execute("COMMIT")
        except duckdb.Error as exc:
            con.execute("ROLLBACK")
            raise StoreError(f"migration {migration.version:04d}_{migration.name} failed: {exc}") from exc
        applied.append(migration)
    return applied
