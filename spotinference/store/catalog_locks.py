"""Named locks for decisions that must be taken once: one `spot sample` run, one wake or one
idle hibernation of a tier at a time.

On a file store everything runs on one host, and these are ``flock``s on files in ``home``, as
they always were (the kernel drops a dead process's lock). On a DuckLake store the gateways and
crons run on several hosts, so the same locks are PostgreSQL session-level advisory locks in the
lake's catalog database: each is held on a connection of its own for the lock's whole length, and
PostgreSQL releases it when that connection drops, so a process killed with -9 (or a host whose
connection dies: server-side TCP keepalives are set) never leaves a lock behind.

A lock is named by its file under ``home`` (``sample.lock``, ``locks/tier-small.lock``); the
catalog lock's key is a hash of that name, so both kinds are the same lock, per store.

Two shapes, as the callers need them: ``hold`` waits (up to a deadline: ``StoreBusyError``) and
``try_hold`` does not wait (it yields None when this process holds the lock, else a line saying
who does). psycopg is imported only on a lake store; the password travels apart from the URL and
never appears in an error.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import StoreBusyError, StoreError

if TYPE_CHECKING:
    from ..config import Settings
    from ..config.models import StoreSettings

log = logging.getLogger(__name__)

_POLL_S = 0.05
# A dead host's connection must drop in seconds, not the kernel's two hours, or its locks stay.
_KEEPALIVES = "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
_NAMESPACE = "spotinference:"


class NamedLocks(Protocol):
    def hold(self, name: str, *, timeout_s: float | None = None) -> AbstractContextManager[None]: ...

    def try_hold(self, name: str) -> AbstractContextManager[str | None]: ...


def named_locks(settings: Settings, home: Path | None = None) -> NamedLocks:
    """The locks of this store: flocks in ``home`` (settings.home unless given) on a file store,
    catalog locks on a lake."""
    if settings.store.kind == "ducklake":
        return CatalogLocks.from_settings(settings.store)
    return FileLocks(home if home is not None else settings.home)


def _holder_note() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}, since {datetime.now(UTC).isoformat(timespec='seconds')}"


class FileLocks:
    """flocks on files in ``home``: one host's processes exclude each other."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def _open(self, name: str) -> int:
        path = self.home / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open {path}: {exc.strerror}",
                             hint="set SPOT_HOME (or `home` in the config) to a writable directory") from None

    @contextmanager
    def hold(self, name: str, *, timeout_s: float | None = None) -> Iterator[None]:
        fd = self._open(name)
        try:
            if timeout_s is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                deadline = time.monotonic() + timeout_s
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise StoreBusyError(f"lock {name} still held after {timeout_s:g} s") from None
                        time.sleep(_POLL_S)
            yield
        finally:
            os.close(fd)  # releases the flock

    @contextmanager
    def try_hold(self, name: str) -> Iterator[str | None]:
        fd = self._open(name)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield os.pread(fd, 200, 0).decode(errors="replace").strip() or "holder unknown"
                return
            os.ftruncate(fd, 0)
            os.pwrite(fd, _holder_note().encode(), 0)
            try:
                yield None
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a lock name (same on every host)."""
    digest = hashlib.blake2b((_NAMESPACE + name).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class CatalogLocks:
    """PostgreSQL advisory locks in the lake's catalog database: every host's processes exclude
    each other. One connection per held lock, closed (so the lock released) when it is left."""

    def __init__(self, catalog: str, password: str | None) -> None:
        self.url = catalog  # without the password, which travels apart
        self._password = password

    @classmethod
    def from_settings(cls, store: StoreSettings) -> CatalogLocks:
        assert store.catalog is not None  # the settings refuse a lake without its catalog
        return cls(store.catalog, store.password.get_secret_value() if store.password is not None else None)

    def _connect(self, name: str) -> Any:
        import psycopg  # only a lake store needs it (the `ducklake` extra)

        try:
            # application_name is what another host sees as the holder (pg_stat_activity).
            return psycopg.connect(self.url, password=self._password, autocommit=True, connect_timeout=10,
                                   application_name=f"spot {name[:20]}: {_holder_note()}"[:63],
                                   options=_KEEPALIVES)
        except psycopg.Error as exc:
            raise StoreBusyError(f"cannot reach the store's catalog at {self.url}: {self._scrub(exc)}",
                                 hint="check that PostgreSQL is up and store.password / SPOT_STORE__PASSWORD") from None

    def _scrub(self, exc: BaseException) -> str:
        line = " ".join(str(exc).split()) or type(exc).__name__
        if self._password:
            line = line.replace(self._password, "***")
        return line[:300]

    def _take(self, conn: Any, key: int) -> bool:
        return bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])

    def _holder(self, conn: Any, key: int) -> str:
        # A bigint advisory lock shows as classid = high 32 bits, objid = low 32 bits, objsubid 1.
        unsigned = key & 0xFFFFFFFFFFFFFFFF
        row = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())",
            (unsigned >> 32, unsigned & 0xFFFFFFFF),
        ).fetchone()
        note = row[0] if row else ""
        return note.split(": ", 1)[1] if ": " in note else (note or "holder unknown")

    def _release(self, conn: Any, name: str) -> None:
        try:
            # A session that died while held (PostgreSQL restarted, the network cut) lost the lock
            # then, and another host may have taken it meanwhile: say so for the operator.
            conn.execute("SELECT 1")
        except Exception:  # noqa: BLE001 - any failure here means the session is gone
            log.warning("lock %s was lost while held: the catalog's connection dropped (%s)", name, self.url)
        try:
            conn.close()  # PostgreSQL drops a session's advisory locks with the session
        except Exception:  # noqa: BLE001 - a connection already gone has released its locks too
            pass

    @contextmanager
    def hold(self, name: str, *, timeout_s: float | None = None) -> Iterator[None]:
        import psycopg

        key = lock_key(name)
        conn = self._connect(name)
        try:
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            try:
                while not self._take(conn, key):
                    if deadline is not None and time.monotonic() >= deadline:
                        raise StoreBusyError(f"lock {name} still held after {timeout_s:g} s "
                                             f"({self._holder(conn, key)})")
                    time.sleep(_POLL_S)
            except psycopg.Error as exc:
                raise StoreBusyError(f"lost the store's catalog at {self.url}: {self._scrub(exc)}") from None
            yield
        finally:
            self._release(conn, name)

    @contextmanager
    def try_hold(self, name: str) -> Iterator[str | None]:
        import psycopg

        key = lock_key(name)
        conn = self._connect(name)
        try:
            try:
                taken = self._take(conn, key)
                holder = None if taken else self._holder(conn, key)
            except psycopg.Error as exc:
                raise StoreBusyError(f"lost the store's catalog at {self.url}: {self._scrub(exc)}") from None
            yield holder
        finally:
            self._release(conn, name)
