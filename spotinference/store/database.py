"""The Store: one DuckDB file in the data directory, opened briefly by every process that uses it.

Access protocol (see DESIGN.md, "Processes and the database"):

* No process keeps the database open. Each read or write takes the cross-process lock
  (``locking.DatabaseLock``), opens DuckDB, does one short piece of work, and closes it.
* Writers that must never wait (the gateway's per-request rows) append to spool files instead
  (``spool.SpoolWriter``); ``flush()`` copies sealed spool segments into their tables, each
  segment and its ledger row in one transaction, so rows are neither lost nor doubled.
* Schema migrations run automatically the first time a process opens the database.

With ``[store] kind = "ducklake"`` the same API reads and writes a DuckLake (``lake.py``): the
catalog in PostgreSQL is transactional and DuckLake retries conflicting commits, so there is no
flock around it; the spool stays local, under ``home``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from ..errors import StoreBusyError, StoreError
from . import lake as lake_mod
from . import migrations as migrations_mod
from .locking import DatabaseLock
from .spool import SealedSegment, SpoolWriter, claim_sealed_segments, drop_partial_tail

if TYPE_CHECKING:
    from ..config.models import Settings

DATABASE_FILE = "spot.duckdb"
# The lake's one-writer lock, held in its catalog (store.catalog_locks): named as the file lock is.
WRITER_LOCK = "spot.duckdb.lock"
SPOOL_DIR = "spool"
# Tables whose rows may arrive through spool files.
SPOOLED_TABLES = frozenset({"requests"})
REJECTED_SUFFIX = ".rejected"


class FileTooNewError(StoreError):
    """The file store's DuckDB file has a storage version this duckdb cannot read."""


@dataclass(frozen=True)
class FlushResult:
    segments: int
    rows: int
    discarded_bytes: int  # torn last lines of writers killed mid-write (never acknowledged)
    rejected: list[str]  # segments that could not be loaded, renamed *.rejected and kept


@dataclass(frozen=True)
class SchemaStatus:
    version: int
    latest: int
    pending: list[str]


class Store:
    def __init__(self, home: Path, *, lock_timeout_s: float = 10.0, lake: lake_mod.LakeTarget | None = None) -> None:
        self.home = home
        self.lake = lake
        self._lake_connections = lake_mod.LakeConnections(lake) if lake is not None else None
        self.path = home / DATABASE_FILE
        self.spool_dir = home / SPOOL_DIR
        self.lock = DatabaseLock(self.path, timeout_s=lock_timeout_s)
        self._migrations = migrations_mod.bundled_migrations()
        self._schema_checked = False
        self._check_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, **options: float) -> Store:
        """The store the settings name: the file in ``home``, or the DuckLake of ``[store]``."""
        lake = lake_mod.LakeTarget.from_settings(settings.store) if settings.store.kind == "ducklake" else None
        return cls(settings.home, lake=lake, **options)

    @property
    def location(self) -> str:
        return self.lake.description if self.lake is not None else str(self.path)

    # -- opening -----------------------------------------------------------------------------

    def _prepare_home(self) -> None:
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            self.spool_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the data directory {self.home}: {exc.strerror}",
                hint="set SPOT_HOME (or `home` in the config) to a writable directory",
            ) from None

    def _exclusive(self) -> AbstractContextManager[object]:
        if self.lake is None:
            return self.lock.exclusive()
        # One writer at a time on a lake too, across hosts (a lock in the catalog): DuckLake does
        # not retry every conflict (two hosts rewriting one table's inlined rows fail to commit).
        from .catalog_locks import CatalogLocks

        return CatalogLocks(self.lake.catalog, self.lake.password).hold(WRITER_LOCK, timeout_s=self.lock.timeout_s)

    def _shared(self) -> AbstractContextManager[object]:
        return self.lock.shared() if self.lake is None else nullcontext()

    def migration_guard(self) -> AbstractContextManager[object]:
        """Held while migrations are applied: on a lake, the writer lock in the catalog, so two
        hosts never migrate at once."""
        return self._exclusive()

    def _failed(self, exc: BaseException) -> None:
        if self._lake_connections is not None:
            self._lake_connections.failed(exc)

    def _exists(self) -> bool:
        return self.lake is not None or self.path.exists()

    def _connect(self, *, read_only: bool) -> duckdb.DuckDBPyConnection:
        if self._lake_connections is not None:
            return self._lake_connections.cursor()
        try:
            con = duckdb.connect(str(self.path), read_only=read_only)
            con.execute("SET TimeZone = 'UTC'")  # times are UTC everywhere, whatever the host says
            return con
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                # Only a process outside spot's protocol (e.g. the duckdb shell) can get here.
                raise StoreBusyError(
                    f"the database {self.path} is held open by a program outside spot",
                    hint="close any duckdb shell or notebook that has the file open",
                ) from None
            if "version number" in str(exc):
                raise FileTooNewError(
                    f"the database {self.path} was written by a newer DuckDB than the installed "
                    f"{duckdb.__version__} can read",
                    hint="run spot where it was written (the ducklake extra pins duckdb 1.5.5; README, \"Several hosts\")",
                ) from None
            raise StoreError(f"cannot open the database {self.path}: {exc}") from None

    @contextmanager
    def writing(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """An exclusive read-write connection, held for one short piece of work."""
        self.migrate()
        with self._exclusive():
            con = self._connect(read_only=False)
            try:
                yield con
            except BaseException as exc:
                self._failed(exc)
                raise
            finally:
                con.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """``writing()`` inside BEGIN/COMMIT: all of the block's writes land, or none do."""
        with self.writing() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection; other readers may hold one at the same time."""
        self.migrate()
        with self._shared():
            con = self._connect(read_only=True)
            try:
                yield con
            except BaseException as exc:
                self._failed(exc)
                raise
            finally:
                con.close()

    # -- schema ------------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply pending migrations; checked once per process, under a shared lock when current."""
        with self._check_lock:
            if self._schema_checked and self._exists():
                return []
            self._prepare_home()
            if self._exists() and not self._pending_under_shared_lock():
                self._schema_checked = True
                return []
            with self.migration_guard():
                con = self._connect(read_only=False)
                try:
                    applied = migrations_mod.apply(con, self._migrations, for_lake=self.lake is not None)
                finally:
                    con.close()
            self._schema_checked = True
            return [f"{m.version:04d}_{m.name}" for m in applied]

    def _pending_under_shared_lock(self) -> bool:
        # Most opens find the schema current: look without excluding other readers.
        with self._shared():
            con = self._connect(read_only=True)
            try:
                return bool(migrations_mod.pending(con, self._migrations))
            finally:
                con.close()

    def schema_status(self) -> SchemaStatus:
        with self.reading() as con:
            version = max(migrations_mod.applied_versions(con), default=0)
            pending = migrations_mod.pending(con, self._migrations)
        return SchemaStatus(version, self._migrations[-1].version, [f"{m.version:04d}_{m.name}" for m in pending])

    # -- spool -------------------------------------------------------------------------------

    def spool_writer(self, table: str, **options: object) -> SpoolWriter:
        if table not in SPOOLED_TABLES:
            raise ValueError(f"{table!r} is not a spooled table (expected one of {sorted(SPOOLED_TABLES)})")
        self._prepare_home()
        return SpoolWriter(self.spool_dir, table, **options)  # type: ignore[arg-type]

    def flush(self) -> FlushResult:
        """Copy every sealed spool segment into its table. Safe to run from any process, any time."""
        if not self.spool_dir.is_dir():
            return FlushResult(0, 0, 0, [])
        rows = discarded = 0
        rejected: list[str] = []
        # Claimed before the database is opened: the gateway's flusher asks every second, and
        # with nothing sealed it should cost a directory listing, not a DuckDB open (~45 ms of CPU).
        segments = claim_sealed_segments(self.spool_dir, set(SPOOLED_TABLES))
        if not segments:
            return FlushResult(0, 0, 0, [])
        try:
            with self.writing() as con:
                for segment in segments:
                    discarded += drop_partial_tail(segment)
                    count, problem = self._ingest(con, segment)
                    rows += count
                    if problem:
                        rejected.append(problem)
                self._forget_deleted_segments(con, [s.path.name for s in segments])
        finally:
            for segment in segments:
                segment.release()
        return FlushResult(len(segments), rows, discarded, rejected)

    def spool_files(self) -> tuple[int, int]:
        """(segments waiting to be flushed, rejected segments kept for inspection)."""
        if not self.spool_dir.is_dir():
            return 0, 0
        names = [p.name for p in self.spool_dir.iterdir()]
        return (
            sum(n.endswith(".jsonl") for n in names),
            sum(n.endswith(REJECTED_SUFFIX) for n in names),
        )

    def _ingest(self, con: duckdb.DuckDBPyConnection, segment: SealedSegment) -> tuple[int, str | None]:
        name = segment.path.name
        done = con.execute("SELECT 1 FROM spool_ingested WHERE segment = ?", [name]).fetchone()
        if done is None:
            count = 0
            con.execute("BEGIN TRANSACTION")
            try:
                if segment.path.stat().st_size:
                    count = self._copy_segment(con, segment)
                con.execute(
                    "INSERT INTO spool_ingested VALUES (?, ?, ?, ?)",
                    [name, segment.table, count, datetime.now(UTC)],
                )
                con.execute("COMMIT")
            except lake_mod.CATALOG_ERRORS:
                # The store went away mid-copy (the lake's catalog restarted): the rows stay in
                # the segment for the next round, and spool_ingested decides if the commit landed.
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:
                    pass  # the transaction died with the connection
                raise
            except duckdb.Error as exc:
                con.execute("ROLLBACK")
                # Keep the rows (never delete what cannot be loaded) but out of the way, so one
                # bad segment does not hold back every later one.
                rejected = segment.path.with_name(name + REJECTED_SUFFIX)
                segment.path.rename(rejected)
                return 0, f"{rejected.name}: {exc}"
        else:
            count = 0  # copied before a crash stopped us deleting it
        segment.path.unlink(missing_ok=True)
        return count, None

    def _copy_segment(self, con: duckdb.DuckDBPyConnection, segment: SealedSegment) -> int:
        columns = con.execute(
            "SELECT column_name, data_type, column_default FROM information_schema.columns "
            "WHERE table_name = ? ORDER BY ordinal_position",
            [segment.table],
        ).fetchall()
        spec = ", ".join(f"'{col}': '{dtype}'" for col, dtype, _ in columns)
        # A key missing from a JSON line reads as NULL; the column's own default should apply.
        select = ", ".join(
            f'COALESCE("{col}", {default}) AS "{col}"' if default is not None else f'"{col}"'
            for col, _, default in columns
        )
        inserted = con.execute(
            f"INSERT INTO {segment.table} BY NAME SELECT {select} FROM read_json(?, "
            f"format = 'newline_delimited', columns = {{{spec}}})",
            [str(segment.path)],
        ).fetchone()
        return int(inserted[0]) if inserted else 0

    def _forget_deleted_segments(self, con: duckdb.DuckDBPyConnection, flushed: list[str]) -> None:
        # Ledger rows only guard against a crash between commit and unlink; once the file is
        # gone they have done their job. A lake's ledger also holds other hosts' segments, whose
        # files are not in this spool: forget only what this round flushed.
        if self.lake is not None:
            names = flushed
        else:
            names = [row[0] for row in con.execute("SELECT segment FROM spool_ingested").fetchall()]
        gone = [n for n in names if not (self.spool_dir / n).exists()]
        if gone:
            con.executemany("DELETE FROM spool_ingested WHERE segment = ?", [[n] for n in gone])
