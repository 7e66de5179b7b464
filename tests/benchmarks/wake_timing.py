"""How long a wake takes, state by state, against `spot sim cloud` with its default delays.

    .venv/bin/python -m tests.benchmarks.wake_timing [--restore-seconds 15] [--load-seconds 2] [--runs 3]

Runs `spot up`, then `spot hibernate` / `spot wake` cycles, and prints, for each wake, the time
in each state from the store's fleet events: the restore call, the provider restoring the VM,
the engine starting until /health answers; and the bound the fleet promises: restore + engine
start-up + 5 s of our own polling.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.fleet_config import sim_tier, write_fleet_config
from tests.servers import start_sim_cloud

SPOT = str(Path(sys.executable).with_name("spot"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restore-seconds", type=float, default=15.0)
    parser.add_argument("--hibernate-seconds", type=float, default=10.0)
    parser.add_argument("--create-seconds", type=float, default=20.0)
    parser.add_argument("--load-seconds", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="spot-wake-"))
    server, root = start_sim_cloud(work / "cloud", "--restore-seconds", str(args.restore_seconds),
                                   "--hibernate-seconds", str(args.hibernate_seconds), "--create-seconds", str(args.create_seconds))
    env = {**os.environ, "SPOT_HOME": str(work / "home")}
    demo = sim_tier(sim={"load_seconds": args.load_seconds})
    write_fleet_config(f"{root}/v1", {"demo": demo}, path=work / "spot.toml")

    def spot(*argv: str) -> float:
        started = time.monotonic()
        subprocess.run([SPOT, *argv], cwd=work, env=env, check=True, capture_output=True)
        return time.monotonic() - started

    try:
        print(f"spot up: {spot('up', 'demo'):.1f} s (create {args.create_seconds:g} s + bootstrap + engine load)")
        rows = []
        for _ in range(args.runs):
            spot("hibernate", "demo")
            total = spot("wake", "demo")
            rows.append((total, *wake_phases(work / "home")))
    finally:
        subprocess.run([SPOT, "down", "demo", "--terminate", "--yes"], cwd=work, env=env, capture_output=True)
        server.stop()

    bound = args.restore_seconds + args.load_seconds + 5
    print(f"\nwake, by state (emulator restore {args.restore_seconds:g} s, engine load {args.load_seconds:g} s):")
    print(f"{'run':>3}  {'hibernated→waking':>17}  {'waking: VM restoring':>20}  {'waking: engine start':>20}  {'spot wake total':>15}  {'bound':>6}")
    for i, (total, call, restoring, engine) in enumerate(rows, 1):
        print(f"{i:>3}  {call:>16.2f}s  {restoring:>19.2f}s  {engine:>19.2f}s  {total:>14.2f}s  {bound:>5.0f}s")


def wake_phases(home: Path) -> tuple[float, float, float]:
    """(restore call, provider restoring, engine start) of the newest wake, from fleet events."""
    from spotinference.fleet.records import FleetRecords
    from spotinference.store import Store

    events = FleetRecords(Store(home)).events(tier="demo", limit=200)
    began = max(e.event_at for e in events if e.node is None and e.reason == "spot wake")

    def first(match) -> object:  # noqa: ANN001
        return min(e.event_at for e in events if e.event_at >= began and match(e))

    waking = first(lambda e: e.to_state == "waking")
    restored = first(lambda e: e.reason == "VM restored: engine starting")
    serving = first(lambda e: e.to_state == "serving")
    return ((waking - began).total_seconds(), (restored - waking).total_seconds(), (serving - restored).total_seconds())


if __name__ == "__main__":
    main()
