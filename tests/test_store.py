"""The store on real DuckDB files: migrations, the spool, the lock."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from spotinference.errors import SchemaTooNewError, StoreBusyError, StoreError
from spotinference.store import FlushResult, Store
from spotinference.store import migrations as m
from spotinference.store.flush_process import SpoolFlushProcess
from tests.workers.store_load import request_row


def table_names(store: Store) -> set[str]:
    with store.reading() as con:
        return {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def test_migrations_apply_on_first_open_and_are_recorded(home: Path) -> None:
    store = Store(home)
    assert not store.path.exists()
    assert {"requests", "sample_runs", "billing_samples", "spool_ingested"} <= table_names(store)
    latest = m.bundled_migrations()[-1].version
    with store.reading() as con:
        ledger = con.execute("SELECT version, name, checksum FROM schema_migrations ORDER BY version").fetchall()
    assert [row[0] for row in ledger] == [mig.version for mig in m.bundled_migrations()]
    assert [row[2] for row in ledger] == [mig.checksum for mig in m.bundled_migrations()]
    status = store.schema_status()
    assert (status.version, status.latest, status.pending) == (latest, latest, [])
    assert Store(home).migrate() == []  # a second process finds nothing to do


def test_a_failing_migration_leaves_neither_its_tables_nor_its_record(home: Path) -> None:
    home.mkdir()
    con = duckdb.connect(str(home / "x.duckdb"))
    good = m.Migration(1, "good", "CREATE TABLE a (x INTEGER);")
    bad = m.Migration(2, "bad", "CREATE TABLE b (x INTEGER); CREATE TABLE broken (x NO_SUCH_TYPE);")
    with pytest.raises(StoreError, match="migration 0002_bad failed"):
        m.apply(con, [good, bad])
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert "a" in tables and "b" not in tables
    assert m.applied_versions(con) == [1]


def test_a_migration_number_skipped_on_this_branch_is_applied_when_it_lands(home: Path) -> None:
    # 0009 shipped while 0008 was reserved on another branch: a database migrated to 9 takes 8 later.
    home.mkdir()
    con = duckdb.connect(str(home / "x.duckdb"))
    first, third = m.Migration(1, "a", "CREATE TABLE a (x INTEGER);"), m.Migration(3, "c", "CREATE TABLE c (x INTEGER);")
    assert [mig.version for mig in m.apply(con, [first, third])] == [1, 3]
    second = m.Migration(2, "b", "CREATE TABLE b (x INTEGER);")
    assert [mig.version for mig in m.apply(con, [first, second, third])] == [2]
    assert m.applied_versions(con) == [1, 2, 3]


def test_a_database_from_a_newer_spot_is_refused(home: Path) -> None:
    store = Store(home)
    with store.writing() as con:
        con.execute("INSERT INTO schema_migrations VALUES (999, 'future', 'x', now())")
    with pytest.raises(SchemaTooNewError, match="schema version 999, newer than this spot knows"):
        Store(home).migrate()


def test_spooled_rows_arrive_typed_with_column_defaults(home: Path) -> None:
    store = Store(home)
    with store.spool_writer("requests") as writer:
        row = request_row("r-1")
        del row["streamed"]  # not given: the column default (false) applies
        writer.append({**row, "extra": {"user": "alice"}})
    result = store.flush()
    assert (result.segments, result.rows, result.rejected) == (1, 1, [])
    with store.reading() as con:
        got = con.execute(
            "SELECT request_id, prompt_tokens, completion_tokens, streamed, client_aborted, "
            "extra->>'user', started_at FROM requests"
        ).fetchall()
    assert got[0][:6] == ("r-1", 7, 11, False, False, "alice")
    assert got[0][6].tzinfo is not None and got[0][6].utcoffset().total_seconds() == 0
    assert got[0][6] == row["started_at"]  # the same instant, to the microsecond
    assert store.spool_files() == (0, 0)


def test_a_flush_with_nothing_sealed_does_not_open_the_database(home: Path) -> None:
    # The gateway's flusher asks every second, busy or idle.
    store = Store(home)
    store.migrate()
    writer = store.spool_writer("requests", rotate_after_s=3600)
    writer.append(request_row("live-1"))  # its writer still holds the segment
    before = store.lock.stats.acquisitions
    assert store.flush() == FlushResult(0, 0, 0, [])
    assert store.lock.stats.acquisitions == before, "flush opened the database with nothing to copy"
    writer.close()
    assert store.flush().rows == 1


def test_a_spooled_time_in_another_zone_is_stored_as_the_same_instant(home: Path) -> None:
    store = Store(home)
    local = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=-5)))
    with store.spool_writer("requests") as writer:
        writer.append({**request_row("r-2"), "started_at": local})
    store.flush()
    with store.reading() as con:
        (started,) = con.execute("SELECT started_at FROM requests").fetchone()
    assert started == local and started.utcoffset().total_seconds() == 0


def test_a_value_the_spool_cannot_store_is_refused_by_name(home: Path) -> None:
    writer = Store(home).spool_writer("requests")
    with pytest.raises(TypeError, match="cannot store PosixPath in a spool row"):
        writer.append({**request_row("r-3"), "extra": {"file": home}})


def test_the_flush_process_yields_the_cpu_and_still_copies_rows(home: Path) -> None:
    # It runs beside the gateway; its copies into DuckDB must not take CPU from the relay.
    store = Store(home)
    writer = store.spool_writer("requests")
    flusher = SpoolFlushProcess(store, writer, interval_s=0.2)
    flusher.start()
    try:
        writer.append(request_row("r-4"))
        writer.close()  # sealed: the flusher's to copy
        deadline = time.monotonic() + 30
        while store.spool_files() != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.spool_files() == (0, 0), "the flush process did not copy the sealed segment"
        assert os.getpriority(os.PRIO_PROCESS, flusher.pid) == 19
    finally:
        flusher.stop()
    with store.reading() as con:
        assert con.execute("SELECT request_id FROM requests").fetchall() == [("r-4",)]


def test_a_live_segment_waits_until_its_writer_seals_it(home: Path) -> None:
    store = Store(home)
    writer = store.spool_writer("requests", rotate_after_s=3600)
    writer.append(request_row("live-1"))
    assert store.flush().rows == 0  # the writer still holds it open
    assert store.spool_files() == (1, 0)
    writer.close()
    assert store.flush().rows == 1


def test_a_segment_copied_before_a_crash_is_not_copied_twice(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(home)
    with store.spool_writer("requests") as writer:
        writer.append(request_row("once"))
    segment = next(store.spool_dir.glob("*.jsonl"))

    def die(self: Path, missing_ok: bool = False) -> None:
        raise KeyboardInterrupt("killed after the commit, before the unlink")

    # The flushing process dies after its commit but before deleting the file.
    with monkeypatch.context() as patch:
        patch.setattr(Path, "unlink", die)
        with pytest.raises(KeyboardInterrupt):
            store.flush()
    assert segment.exists()
    assert store.flush().rows == 0
    with store.reading() as con:
        assert con.execute("SELECT count(*) FROM requests").fetchone() == (1,)
    assert not segment.exists()


def test_a_torn_last_line_is_dropped_and_the_rest_kept(home: Path) -> None:
    store = Store(home)
    with store.spool_writer("requests") as writer:
        writer.append(request_row("whole"))
    segment = next(store.spool_dir.glob("*.jsonl"))
    with segment.open("ab") as handle:
        handle.write(b'{"request_id": "torn", "gateway')  # a writer killed inside write(2)
    result = store.flush()
    assert result.rows == 1 and result.discarded_bytes == len(b'{"request_id": "torn", "gateway')


def test_an_unloadable_segment_is_kept_aside_and_does_not_block_others(home: Path) -> None:
    store = Store(home)
    with store.spool_writer("requests", rotate_after_rows=1) as writer:
        writer.append({**request_row("bad"), "started_at": "yesterday"})
        writer.append(request_row("good"))
    result = store.flush()
    assert result.rows == 1
    assert len(result.rejected) == 1 and "yesterday" in result.rejected[0]
    assert store.spool_files() == (0, 1)
    kept = next(store.spool_dir.glob("*.rejected")).read_text()
    assert '"request_id":"bad"' in kept


def test_a_held_database_gives_a_busy_error_after_the_deadline(home: Path) -> None:
    store = Store(home)
    store.migrate()
    impatient = Store(home, lock_timeout_s=0.2)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.writing():
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(10)
    try:
        with pytest.raises(StoreBusyError, match="stayed busy for 0.2 s"):
            with impatient.reading():
                pass
    finally:
        release.set()
        holder.join()
    with impatient.reading() as con:  # and works once the holder is done
        assert con.execute("SELECT 1").fetchone() == (1,)


def test_readers_share_the_database(home: Path) -> None:
    store = Store(home)
    store.migrate()
    other = Store(home, lock_timeout_s=0.5)
    with store.reading() as first, other.reading() as second:
        assert first.execute("SELECT count(*) FROM requests").fetchone() == second.execute(
            "SELECT count(*) FROM requests"
        ).fetchone()


def test_an_unwritable_data_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create the data directory"):
        Store(blocker / "home").migrate()


def test_times_are_stored_in_utc(home: Path) -> None:
    store = Store(home)
    with store.transaction() as con:
        con.execute(
            "INSERT INTO sample_runs VALUES ('r', 'sim', ?, ?, true, NULL, 0)",
            [datetime(2026, 1, 1, 12, tzinfo=UTC), datetime(2026, 1, 1, 12, 0, 1, tzinfo=UTC)],
        )
    with store.reading() as con:
        assert con.execute("SELECT strftime(started_at, '%H:%M') FROM sample_runs").fetchone() == ("12:00",)


def test_a_failed_transaction_writes_nothing(home: Path) -> None:
    store = Store(home)
    with pytest.raises(RuntimeError):
        with store.transaction() as con:
            con.execute("INSERT INTO sample_runs VALUES ('r', 'sim', now(), now(), true, NULL, 0)")
            raise RuntimeError("sampler crashed mid-run")
    with store.reading() as con:
        assert con.execute("SELECT count(*) FROM sample_runs").fetchone() == (0,)
