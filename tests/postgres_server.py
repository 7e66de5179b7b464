"""A real PostgreSQL server for the tests, started by the suite itself (issue 20: the DuckLake
catalog). Debian's ``postgresql`` package is installed with apt on first use (``ensure_program``,
required: the multi-host tests fail with one line rather than skip where it cannot be installed);
``initdb`` and ``pg_ctl`` then run in a temporary directory on a free loopback port.

PostgreSQL refuses to run as root, so as root the server runs as the package's ``postgres`` user
(``runuser``); as anyone else it runs as that user. Connections use password authentication
(scram) for the one superuser the tests create, as an operator's catalog would; the password is
handed to clients through ``PGPASSWORD``-style settings, never a URL.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.system_packages import ensure_installed

USER = "spot"


def _bin_dir() -> Path:
    # The server's programs live under /usr/lib/postgresql/VERSION/bin, off PATH; the client
    # package alone (psql) has that directory too, so look for initdb itself.
    def find() -> Path | None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        return Path(found[-1]).parent if found else None

    return ensure_installed("postgresql", find, what="PostgreSQL's initdb", required=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    root: Path
    port: int
    password: str
    bin_dir: Path
    host: str = "127.0.0.1"
    user: str = USER
    _as_user: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str) -> str:
        """A libpq URL without the password (that travels apart, as the product requires)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [*self._as_user, str(self.bin_dir / program), *args]
        # From "/": the postgres user may not enter the test's working directory (a tmp_path).
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/",
                              env={**os.environ, "PGPASSWORD": self.password})
        if check and done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses={self.host}", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def sql(self, statement: str, database: str = "postgres") -> str:
        done = self._run("psql", "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database,
                         "-v", "ON_ERROR_STOP=1", "-At", "-c", statement)
        return done.stdout.strip()

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """A fresh database (a catalog of its own); returns its URL."""
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_postgres() -> PostgresServer:
    """A running server in a new directory under the system's temporary directory (not pytest's
    tmp_path: as root the server runs as ``postgres``, which cannot enter root's 0700 directories).
    ``remove()`` stops it and deletes the directory."""
    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="spot-postgres-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")  # the Debian package's service user
        shutil.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    server = PostgresServer(root=root, port=_free_port(), password=secrets.token_urlsafe(16),
                            bin_dir=bin_dir, _as_user=as_user)
    pwfile = root / "pwfile"
    pwfile.write_text(server.password + "\n")
    if as_user:
        shutil.chown(pwfile, "postgres")
    pwfile.chmod(0o600)
    server._run("initdb", "-D", str(server.data_dir), "-U", USER, "--pwfile", str(pwfile),
                "-A", "scram-sha-256", "--no-sync", "-E", "UTF8")
    pwfile.unlink()
    server.start()
    deadline = time.monotonic() + 30
    while server._run("pg_isready", "-h", server.host, "-p", str(server.port), check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL did not accept connections: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.2)
    return server
