"""Runs the store_load roles side by side as real OS processes and collects their reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def worker_command(role: str, seconds: float, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tests.workers.store_load", role, str(seconds), *extra]


def worker_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOT_")}
    env["SPOT_HOME"] = str(home)
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_side_by_side(home: Path, seconds: float, request_rate: float = 250.0) -> dict[str, dict]:
    """Start the gateway-like writer, the sampler and the reader at once; wait for all three."""
    procs = {
        "requests": subprocess.Popen(
            worker_command("requests", seconds, str(request_rate)), env=worker_env(home),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        ),
        "samples": subprocess.Popen(
            worker_command("samples", seconds), env=worker_env(home),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        ),
        "reads": subprocess.Popen(
            worker_command("reads", seconds), env=worker_env(home),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        ),
    }
    reports = {}
    for role, proc in procs.items():
        out, err = proc.communicate(timeout=seconds + 120)
        if proc.returncode != 0:
            raise AssertionError(f"{role} worker exited {proc.returncode}: {out}\n{err}")
        reports[role] = json.loads(out.strip().splitlines()[-1])
    return reports
