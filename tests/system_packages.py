"""Programs the tests drive that a fresh CI machine may lack (sshd, tmux): installed with apt on
first use. A test skips only where nothing can install them (no apt-get, or not root), unless it
asked for ``required=True`` (the real-node tests): then it fails with one line saying why."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def ensure_program(program: str | Path, package: str, *, required: bool = False) -> Path:
    """The program's path (an absolute path, or a name looked up on PATH), installing ``package``
    with apt when it is missing. Where it cannot be installed: skip, or with ``required`` fail."""
    return ensure_installed(package, lambda: _find(program), what=str(program), required=required)


def ensure_installed(package: str, find: Callable[[], Path | None], *, what: str, required: bool = False) -> Path:
    """What ``find`` returns, installing ``package`` with apt first when it returns None (for
    programs off PATH, such as PostgreSQL's initdb under /usr/lib/postgresql/VERSION/bin)."""
    found = find()
    if found is not None:
        return found
    if shutil.which("apt-get") is None:
        _cannot(f"{what} is not installed and there is no apt-get to install {package}", required)
    if os.geteuid() != 0:
        _cannot(f"{what} is not installed and installing {package} needs root", required)
    # One apt at a time (xdist workers, parallel sessions): a second apt-get fails on dpkg's lock.
    with open(Path(tempfile.gettempdir()) / "spotinference-tests-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = find()  # another process installed it while this one waited
        if found is not None:
            return found
        install = ["apt-get", "install", "-y", "--no-install-recommends", package]
        if _apt(install).returncode != 0:
            # A fresh machine often has no package lists yet.
            _check(_apt(["apt-get", "update"]), "apt-get update")
            _check(_apt(install), f"apt-get install {package}")
    found = find()
    if found is None:
        raise RuntimeError(f"{package} installed but {what} is still missing")
    return found


def _cannot(reason: str, required: bool) -> None:
    if required:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _find(program: str | Path) -> Path | None:
    path = Path(program)
    if path.is_absolute():
        return path if path.exists() else None
    which = shutil.which(str(program))
    return Path(which) if which else None


def _apt(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=APT_ENV, capture_output=True, text=True, timeout=900)


def _check(done: subprocess.CompletedProcess[str], what: str) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr[-2000:]}")
