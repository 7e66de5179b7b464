"""`spot db export --to ducklake`: move a file store (home/spot.duckdb) into the configured lake.

The file's spool is flushed first, both stores are brought to the same schema, and every table is
copied in one lake transaction, its rows counted on both sides: a count that differs rolls the
whole copy back. A lake that already holds rows is refused before anything is written, so an
export never merges two ledgers or runs twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from ..errors import InputError, StoreError
from .database import FileTooNewError, Store

if TYPE_CHECKING:
    from ..config.models import Settings

# The lake's own migration ledger is written by its migrate(), not copied.
_NOT_COPIED = frozenset({"schema_migrations"})
_SOURCE = "spot_file_store"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ExportedTable:
    table: str
    rows: int


def _tables(con) -> list[str]:  # noqa: ANN001 - a DuckDB connection
    rows = con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
                       "AND schema_name = 'main' ORDER BY table_name").fetchall()
    return [r[0] for r in rows if r[0] not in _NOT_COPIED]


def _count(con, table: str) -> int:  # noqa: ANN001
    return int(con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])


def export_to_parquet(settings: Settings, directory: Path) -> list[ExportedTable]:
    """The file store's tables as Parquet files and a manifest of their row counts: the way from a
    file store whose DuckDB is newer than the one the ducklake extra pins (it cannot read the file)."""
    source = Store(settings.home)
    if not source.path.exists():
        raise InputError(f"there is no file store to export at {source.path}")
    if directory.exists() and any(directory.iterdir()):
        raise InputError(f"{directory} is not empty: export into a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    source.flush()  # rows still spooled belong in the copy
    version = source.schema_status().version
    exported = []
    with source.reading() as con:
        for table in _tables(con):
            path = directory / f"{table}.parquet"
            con.execute(f"COPY \"{table}\" TO {_literal(str(path))} (FORMAT parquet)")
            rows = _count(con, table)
            if con.execute(f"SELECT count(*) FROM read_parquet({_literal(str(path))})").fetchone()[0] != rows:
                raise StoreError(f"the Parquet copy of {table} does not hold its {rows} rows")
            exported.append(ExportedTable(table, rows))
    manifest = {"schema_version": version, "tables": {t.table: t.rows for t in exported}}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return exported


def export_to_lake(settings: Settings, from_dir: Path | None = None) -> list[ExportedTable]:
    """Copy the file store in ``home`` (or a ``export_to_parquet`` directory) into the lake."""
    if settings.store.kind != "ducklake":
        raise InputError('spot db export --to ducklake needs the lake in the config: [store] kind = "ducklake" '
                         "with catalog and data_path")
    source = Store(settings.home)
    lake = Store.from_settings(settings)
    manifest = _manifest(from_dir) if from_dir is not None else None
    if manifest is None and not source.path.exists():
        raise InputError(f"there is no file store to export at {source.path}")
    lake.migrate()
    with lake.reading() as con:
        held = [(t, n) for t in _tables(con) if (n := _count(con, t))]
    if held:
        raise InputError(f"the lake already holds rows ({', '.join(f'{t}: {n}' for t, n in held)}); "
                         "export moves a file store into an empty lake only")
    version = lake.schema_status().version
    if manifest is not None:
        if manifest["schema_version"] != version:
            raise InputError(f"{from_dir} holds schema v{manifest['schema_version']}, the lake is at v{version}: "
                             "export it again with this version of spot")
        return _copy_all(lake, lambda table: f"read_parquet({_literal(str(from_dir / f'{table}.parquet'))})",
                         manifest["tables"])
    try:
        source.flush()
        source.migrate()
    except FileTooNewError:
        raise StoreError(
            f"{source.path} was written by a newer DuckDB than this one ({duckdb.__version__}, the "
            "ducklake extra's) can read: run `spot db export --to parquet --dir DIR` where spot runs "
            "on that DuckDB, then `spot db export --to ducklake --from DIR` here") from None
    if source.schema_status().version != version:
        raise StoreError("the file store and the lake are at different schema versions after migrating")
    with source.lock.shared():  # no spot process writes the file while it is copied
        with lake.writing() as con:
            try:
                con.execute(f"ATTACH {_literal(str(source.path))} AS {_SOURCE} (READ_ONLY)")
            except duckdb.Error as exc:
                raise StoreError(f"cannot open {source.path}: {exc}") from None
        try:
            return _copy_all(lake, lambda table: f'{_SOURCE}.main."{table}"', None)
        finally:
            with lake.writing() as con:
                con.execute(f"DETACH DATABASE IF EXISTS {_SOURCE}")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _manifest(directory: Path) -> dict:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        raise InputError(f"{directory} holds no {MANIFEST} (expected a directory written by "
                         "`spot db export --to parquet --dir DIR`)") from None
    return manifest


def _copy_all(lake: Store, relation, expected: dict[str, int] | None) -> list[ExportedTable]:  # noqa: ANN001
    with lake.writing() as con:
        tables = _tables(con)
        if expected is not None and set(expected) != set(tables):
            raise InputError(f"the export's tables ({', '.join(sorted(expected))}) are not the lake's "
                             f"({', '.join(tables)})")
        con.execute("BEGIN TRANSACTION")
        try:
            exported = []
            for table in tables:
                want = expected[table] if expected is not None else _count_relation(con, relation(table))
                con.execute(f'INSERT INTO "{table}" BY NAME SELECT * FROM {relation(table)}')
                copied = _count(con, table)
                if copied != want:
                    raise StoreError(f"export of {table} copied {copied} rows of {want}; nothing was exported")
                exported.append(ExportedTable(table, copied))
        except BaseException:
            con.execute("ROLLBACK")  # the lake stays empty
            raise
        con.execute("COMMIT")
    return exported


def _count_relation(con, relation: str) -> int:  # noqa: ANN001
    return int(con.execute(f"SELECT count(*) FROM {relation}").fetchone()[0])
