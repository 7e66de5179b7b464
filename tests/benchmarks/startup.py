"""Benchmark: how fast does `spot` start? (target: median ≤ 250 ms for --help and --version)

    .venv/bin/python -m tests.benchmarks.startup [RUNS]

Runs each command RUNS times (default 21) as a fresh process, after two warm-up runs, and prints
the median and spread beside a bare `python -c pass` measured in the same run, so the figure can
be read against this machine's own interpreter start-up.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

SPOT = Path(sys.executable).with_name("spot")


def timings(command: list[str], runs: int) -> list[float]:
    for _ in range(2):
        subprocess.run(command, capture_output=True, check=True)
    results = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        results.append((time.perf_counter() - started) * 1000)
    return results


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 21
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "spot --help": [str(SPOT), "--help"],
        "spot --version": [str(SPOT), "--version"],
    }
    print(f"{'command':<18}{'median ms':>10}{'min ms':>9}{'max ms':>9}   ({runs} runs each)")
    for label, command in commands.items():
        t = timings(command, runs)
        print(f"{label:<18}{statistics.median(t):>10.1f}{min(t):>9.1f}{max(t):>9.1f}")


if __name__ == "__main__":
    main()
