"""Every test runs with its own data directory and no config but what it writes itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPOT = Path(sys.executable).with_name("spot")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Clear SPOT_*, point SPOT_HOME at a fresh directory, run from an empty working directory."""
    for name in list(os.environ):
        if name.upper().startswith("SPOT_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("SPOT_HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # so a ./spot.toml in the checkout is never picked up
    return home


@pytest.fixture
def home(isolated: Path) -> Path:
    return isolated


def run_spot(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed `spot` console script as a user would, in the test's environment."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [str(SPOT), *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120
    )


@pytest.fixture
def spot():
    return run_spot
