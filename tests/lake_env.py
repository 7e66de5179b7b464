"""A second virtualenv with `spotinference[ducklake]` installed, for the DuckLake store's tests.

The DuckLake extensions exist only for duckdb 1.5.5, which the ``ducklake`` extra pins, while the
test venv runs the duckdb file-store users get (2.x). So the lake tests drive the product from
its own venv, as an operator who installed the extra would: its ``spot`` in subprocesses, and its
``python`` for small scripts. Built once per machine (cached under
~/.cache/spotinference-tests/, keyed by pyproject.toml and the checkout's path, behind a lock so
parallel tests build it once), with ``pip install -e`` so code changes apply without a rebuild.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "spotinference-tests"


@dataclass(frozen=True)
class LakeEnv:
    root: Path

    @property
    def spot(self) -> Path:
        return self.root / "bin" / "spot"

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def run_spot(self, *args: str, env: dict[str, str] | None = None,
                 timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.spot), *args], capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, **(env or {})})

    def run_python(self, script: str, *args: str, env: dict[str, str] | None = None,
                   timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.python), "-c", script, *args], capture_output=True, text=True,
                              timeout=timeout_s, env={**os.environ, **(env or {})})


def _key() -> str:
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + str(REPO).encode())
    return digest.hexdigest()[:16]


def lake_env() -> LakeEnv:
    CACHE.mkdir(parents=True, exist_ok=True)
    env = LakeEnv(CACHE / f"lake-venv-{_key()}")
    ready = env.root / ".ready"
    with open(CACHE / f"lake-venv-{_key()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first test builds; the others wait, then reuse
        if not ready.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(env.root)], check=True)
            done = subprocess.run([str(env.python), "-m", "pip", "install", "-q", "-e", f"{REPO}[ducklake]"],
                                  capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise RuntimeError(f"building the lake venv failed: {done.stderr[-2000:]}")
            ready.touch()
    return env
