"""Named locks on a lake store live in the catalog's PostgreSQL (spotinference/store/catalog_locks.py):
a lock taken on one "host" (a process with a home of its own) is seen as held from another, a
process killed with -9 leaves nothing held, and the password never shows. On a file store the
same calls are the flocks they always were, and psycopg is not needed at all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spotinference.errors import StoreBusyError
from tests.conftest import SPOT

# Holds one named lock (chosen from ./spot.toml like every spot command), says so, waits for stdin.
HOLDER = """
import sys
from spotinference.config import load_settings
from spotinference.store.catalog_locks import named_locks
settings, _ = load_settings(None)
with named_locks(settings).hold(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


def lake_config(directory: Path, catalog: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spot.toml").write_text(f"""
[store]
kind = "ducklake"
catalog = "{catalog}"
data_path = "{directory.parent / 'lake-data'}"

[providers.sim]
kind = "hyperstack"
base_url = "http://127.0.0.1:9/v1"
emulator = true
retry_deadline_s = 1
""")


def host_env(home: Path, password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SPOT_")}
    return {**env, "SPOT_HOME": str(home), "SPOT_STORE__PASSWORD": password}


def start_holder(host: Path, name: str, password: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, name], cwd=host, env=host_env(host / "home", password),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    line = holder.stdout.readline()
    assert line == "held\n", holder.stderr.read() if holder.stderr else line
    return holder


@pytest.fixture
def lake_hosts(postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Two "hosts" (a directory with spot.toml and a home each) on one catalog; this test process
    acts as host B (its cwd and SPOT_HOME)."""
    catalog = postgres.create_database(f"locks_{os.getpid()}_{time.monotonic_ns()}")
    a, b = tmp_path / "host-a", tmp_path / "host-b"
    for host in (a, b):
        lake_config(host, catalog)
    for key in list(os.environ):
        if key.upper().startswith("SPOT_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(b)
    monkeypatch.setenv("SPOT_HOME", str(b / "home"))
    monkeypatch.setenv("SPOT_STORE__PASSWORD", postgres.password)
    return a, b


def settings_here():  # noqa: ANN201
    from spotinference.config import load_settings

    return load_settings(None)[0]


def test_a_lock_held_on_one_host_is_held_for_another_until_its_holder_is_killed(lake_hosts, postgres) -> None:
    from spotinference.store.catalog_locks import CatalogLocks, named_locks

    a, _ = lake_hosts
    locks = named_locks(settings_here())
    assert isinstance(locks, CatalogLocks)
    holder = start_holder(a, "locks/tier-small.lock", postgres.password)
    try:
        with locks.try_hold("locks/tier-small.lock") as held_by:
            assert held_by is not None and f"pid {holder.pid}" in held_by  # who holds it, from host B
        with locks.try_hold("locks/tier-other.lock") as held_by:
            assert held_by is None  # another name is another lock
        with pytest.raises(StoreBusyError) as busy, locks.hold("locks/tier-small.lock", timeout_s=0.5):
            raise AssertionError("took a lock another host holds")
        assert "still held" in busy.value.message and postgres.password not in busy.value.message

        os.kill(holder.pid, signal.SIGKILL)  # the holder dies without releasing anything
        holder.wait(timeout=10)
        # PostgreSQL drops the dead session (and its lock) as the connection closes.
        with locks.hold("locks/tier-small.lock", timeout_s=10):
            with locks.try_hold("locks/tier-small.lock") as held_by:
                assert held_by is not None and f"pid {os.getpid()}" in held_by  # ours now, even to ourselves
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_a_waiting_host_gets_the_lock_when_the_holder_lets_go(lake_hosts, postgres) -> None:
    from spotinference.store.catalog_locks import named_locks

    a, _ = lake_hosts
    holder = start_holder(a, "sample.lock", postgres.password)
    try:
        locks = named_locks(settings_here())
        with locks.try_hold("sample.lock") as held_by:
            assert held_by is not None
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "released\n"
        assert holder.wait(timeout=10) == 0
        with locks.hold("sample.lock", timeout_s=10), locks.try_hold("sample.lock") as again:
            assert again is not None  # a second session of this process is refused too: one holder
        with locks.try_hold("sample.lock") as held_by:
            assert held_by is None  # released when left
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_a_wrong_password_is_one_line_that_never_holds_it(lake_hosts, postgres, monkeypatch) -> None:
    from spotinference.store.catalog_locks import named_locks

    wrong = "not-the-password-0xC0FFEE"
    monkeypatch.setenv("SPOT_STORE__PASSWORD", wrong)
    with pytest.raises(StoreBusyError) as refused, named_locks(settings_here()).try_hold("sample.lock"):
        raise AssertionError("connected with a wrong password")
    message = refused.value.message
    assert "\n" not in message and "catalog" in message and "password authentication failed" in message
    assert wrong not in message and postgres.password not in message

    # The same from the user's side: `spot sample` on that host says it in one line, exit 4.
    result = subprocess.run([str(SPOT), "sample"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 4, result.stderr
    assert result.stderr.strip().count("\n") <= 1 and "Traceback" not in result.stderr  # the line, and its hint
    assert "catalog" in result.stderr and wrong not in result.stdout + result.stderr


def test_a_file_store_uses_flocks_in_home_and_never_needs_psycopg(home: Path, tmp_path: Path) -> None:
    # psycopg made unimportable: a file store's locks (sample, tier) must not touch it.
    blocker = tmp_path / "no-psycopg"
    blocker.mkdir()
    (blocker / "psycopg.py").write_text("raise ImportError('psycopg must not be imported on a file store')\n")
    code = """
import fcntl, sys
from spotinference.config import load_settings
from spotinference.fleet.locks import tier_lock, try_tier_lock
from spotinference.store.catalog_locks import FileLocks, named_locks
settings, _ = load_settings(None)
assert isinstance(named_locks(settings), FileLocks)
with tier_lock(settings, "small"):
    path = settings.home / "locks" / "tier-small.lock"
    with open(path) as other:  # the same flock file as always: another opener is refused
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            sys.exit("tier lock not held")
        except BlockingIOError:
            pass
    with try_tier_lock(settings, "small") as held_by:
        assert held_by is not None
with named_locks(settings).try_hold("sample.lock") as held_by:
    assert held_by is None and (settings.home / "sample.lock").exists()
assert "psycopg" not in sys.modules
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


def test_a_lock_lost_with_its_connection_is_reported_when_left(lake_hosts, postgres, caplog) -> None:
    from spotinference.store.catalog_locks import named_locks

    locks = named_locks(settings_here())
    with caplog.at_level("WARNING", logger="spotinference.store.catalog_locks"):
        with locks.hold("locks/tier-small.lock", timeout_s=10):
            postgres.restart()  # every session dies, this lock's with it
            with locks.try_hold("locks/tier-small.lock") as held_by:
                assert held_by is None  # free for any other host now
        with locks.hold("locks/tier-small.lock", timeout_s=10):
            pass  # a lock kept to its end says nothing
    lost = [r.getMessage() for r in caplog.records if "lost while held" in r.getMessage()]
    assert len(lost) == 1 and lost[0].startswith("lock locks/tier-small.lock was lost while held"), lost
    assert postgres.password not in lost[0]
