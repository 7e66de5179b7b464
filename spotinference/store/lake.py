"""Opening the DuckLake store: catalog in PostgreSQL, data as Parquet files in a shared directory.

DuckDB normally downloads its extensions at run time; spot loads them from the wheels the
``ducklake`` extra installs instead (``duckdb-extension-ducklake``, ``-postgres-scanner``), which
ship ``<package>/extensions/v<duckdb version>/<name>.duckdb_extension``. An extension loads only
into the DuckDB it was built for, hence the extra pins duckdb (README, "Several hosts").

The catalog's password reaches PostgreSQL through an in-memory DuckDB secret (never persisted,
never in the ATTACH string DuckDB may echo), and is scrubbed from every error message.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

import duckdb

from ..errors import StoreBusyError, StoreError

if TYPE_CHECKING:
    from ..config.models import StoreSettings

LAKE_ALIAS = "lake"
# What the catalog or the shared files going away raise: the connection, a file, or a commit
# PostgreSQL never confirmed (its session died mid-transaction; a conflict with another host's
# commit raises it too). Each means "try again later", never "this data is bad".
CATALOG_ERRORS = (duckdb.IOException, duckdb.ConnectionException, duckdb.TransactionException)
INSTALL_HINT = "pip install 'spotinference[ducklake]'"
# (wheel package, extension file name): postgres_scanner first, ducklake attaches through it.
_EXTENSIONS = (
    ("duckdb_extension_postgres_scanner", "postgres_scanner"),
    ("duckdb_extension_ducklake", "ducklake"),
)


@dataclass(frozen=True)
class LakeTarget:
    catalog: str  # postgresql://USER@HOST:PORT/DATABASE, without the password
    data_path: Path
    password: str | None

    @classmethod
    def from_settings(cls, store: StoreSettings) -> LakeTarget:
        assert store.catalog is not None and store.data_path is not None  # the settings refuse otherwise
        password = store.password.get_secret_value() if store.password is not None else None
        return cls(store.catalog, store.data_path, password)

    def __repr__(self) -> str:  # never the password
        return f"LakeTarget(catalog={self.catalog!r}, data_path={str(self.data_path)!r})"

    @property
    def description(self) -> str:
        return f"ducklake {self.catalog} (data {self.data_path})"


def extension_files() -> list[Path]:
    """The extension binaries built for the running duckdb, or one line saying what to install."""
    found = []
    for package, name in _EXTENSIONS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise StoreError(f"the ducklake store needs the {package.replace('_', '-')} package, which is not "
                             f"installed (duckdb {duckdb.__version__} found): {INSTALL_HINT}")
        root = Path(next(iter(spec.submodule_search_locations))) / "extensions"
        path = root / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
        if not path.is_file():
            built_for = sorted(p.name.removeprefix("v") for p in root.glob("v*")) if root.is_dir() else []
            raise StoreError(f"the ducklake store's {name} extension is built for duckdb "
                             f"{', '.join(built_for) or 'another version'} but duckdb {duckdb.__version__} "
                             f"is installed: {INSTALL_HINT}")
        found.append(path)
    return found


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _secret_sql(target: LakeTarget) -> tuple[str, str]:
    """CREATE SECRET for the catalog (in memory only), and the libpq options the URL adds."""
    url = urlsplit(target.catalog)
    parts = {
        "HOST": url.hostname or "localhost",
        "PORT": str(url.port or 5432),
        "DATABASE": unquote(url.path.lstrip("/")) or "postgres",
        "USER": unquote(url.username or ""),
    }
    if target.password is not None:
        parts["PASSWORD"] = target.password
    fields = ", ".join(f"{k} {_sql_literal(v)}" for k, v in parts.items() if v)
    extra = " ".join(f"{k}={v}" for k, v in parse_qsl(url.query))  # e.g. sslmode=require
    return f"CREATE OR REPLACE TEMPORARY SECRET spot_catalog (TYPE postgres, {fields})", extra


def _one_line(message: str, password: str | None) -> str:
    if password:
        message = message.replace(password, "***")
    return re.sub(r"\s+", " ", message).strip()


class LakeConnections:
    """One attached lake per process, a cursor of it per piece of work.

    Loading the extensions and attaching costs ~0.7 s (a PostgreSQL session, the catalog's
    snapshot); a report that opens the store forty times would spend half a minute on it. So the
    attach is kept, and each ``reading()``/``writing()`` gets a cursor: its own connection to the
    same DuckDB, safe from another thread. A connection error drops the attach; the next piece of
    work attaches again (PostgreSQL restarted, say).
    """

    def __init__(self, target: LakeTarget) -> None:
        self.target = target
        self._base: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._base is None:
                self._base = connect(self.target)
            cursor = self._base.cursor()
        try:
            cursor.execute(f"USE {LAKE_ALIAS}")
            cursor.execute("SET TimeZone = 'UTC'")
        except duckdb.Error as exc:
            cursor.close()
            self.failed(exc)
            raise
        return cursor

    def failed(self, exc: BaseException) -> None:
        """After an error in a piece of work: if it was the connection (or the shared files), attach
        afresh next time and say so in one line (exit 4, HTTP 503: the store is unreachable)."""
        if not isinstance(exc, CATALOG_ERRORS):
            return
        with self._lock:
            base, self._base = self._base, None
        if base is not None:
            try:
                base.close()
            except duckdb.Error:
                pass
        raise StoreBusyError(f"lost the DuckLake store {self.target.description}: "
                             f"{_one_line(str(exc), self.target.password)}",
                             hint="is PostgreSQL running and the data path mounted? the next try attaches again") from None

    def close(self) -> None:
        with self._lock:
            if self._base is not None:
                self._base.close()
                self._base = None


def connect(target: LakeTarget) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake attached as the default database."""
    files = extension_files()
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")  # times are UTC everywhere, whatever the host says
        con.execute("SET autoinstall_known_extensions = false")  # never reach for the network
        for path in files:
            con.execute(f"LOAD {_sql_literal(str(path))}")
        secret, extra = _secret_sql(target)
        con.execute(secret)
        data_path = str(target.data_path).rstrip("/") + "/"
        con.execute(f"ATTACH {_sql_literal('ducklake:postgres:' + extra)} AS {LAKE_ALIAS} "
                    f"(DATA_PATH {_sql_literal(data_path)}, METADATA_PARAMETERS MAP {{'SECRET': 'spot_catalog'}})")
        con.execute(f"USE {LAKE_ALIAS}")
        return con
    except duckdb.Error as exc:
        con.close()
        message = _one_line(str(exc), target.password)
        if "password authentication failed" in message or "no password supplied" in message:
            raise StoreError(f"the DuckLake catalog {target.catalog} refused the password",
                             hint="check SPOT_STORE__PASSWORD or store.password_file") from None
        if "connect" in message.lower():
            raise StoreBusyError(f"cannot reach the DuckLake catalog {target.catalog}: {message}",
                                 hint="is PostgreSQL running and the catalog URL right?") from None
        raise StoreError(f"cannot open the DuckLake store {target.description}: {message}") from None
