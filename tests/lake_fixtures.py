"""A DuckLake store for a test: a fresh database on the suite's PostgreSQL, a data directory, and a
config naming them (``[store] kind = "ducklake"``); the password travels in SPOT_STORE__PASSWORD."""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

_names = itertools.count()

# Prints the schema of the store the config names: tables, columns, types, nullability, defaults,
# and macros with their parameters; run with the lake venv's python (it reads either store).
SCHEMA_SCRIPT = """
import json, sys
from pathlib import Path
from spotinference.config import load_settings
from spotinference.store import Store
settings, _ = load_settings(Path(sys.argv[1]))
with Store.from_settings(settings).reading() as con:
    columns = con.execute(
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_catalog = current_database() ORDER BY table_name, ordinal_position").fetchall()
    macros = con.execute(
        "SELECT function_name, parameters, macro_definition FROM duckdb_functions() "
        "WHERE database_name = current_database() AND function_type LIKE '%macro%' "
        "ORDER BY function_name").fetchall()
    migrations = con.execute("SELECT version, name, checksum FROM schema_migrations ORDER BY version").fetchall()
print(json.dumps({"columns": columns, "macros": macros, "migrations": migrations}))
"""


@dataclass(frozen=True)
class Lake:
    config: Path
    home: Path
    catalog: str
    data_path: Path
    password: str

    @property
    def env(self) -> dict[str, str]:
        return {"SPOT_CONFIG": str(self.config), "SPOT_HOME": str(self.home), "SPOT_STORE__PASSWORD": self.password}


def write_config(path: Path, home: Path, store: str = "") -> Path:
    path.write_text(f'home = "{home}"\n\n[budget]\nenforce = false\n\n{store}')
    return path


def new_lake(postgres, tmp_path: Path, home: Path) -> Lake:
    name = f"lake{os.getpid()}_{next(_names)}"
    catalog = postgres.create_database(name)
    data = tmp_path / f"{name}-data"
    data.mkdir()
    config = write_config(tmp_path / f"{name}.toml", home,
                          f'[store]\nkind = "ducklake"\ncatalog = "{catalog}"\ndata_path = "{data}"\n')
    return Lake(config, home, catalog, data, postgres.password)


def schema(lake_venv, config: Path, env: dict[str, str] | None = None) -> dict:
    done = lake_venv.run_python(SCHEMA_SCRIPT, str(config), env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
