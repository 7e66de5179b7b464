"""The wake timeline of a request that lands on a hibernated tier, through the gateway.

    .venv/bin/python -m tests.benchmarks.wake_on_request [--restore-seconds 15] [--load-seconds 2] [--runs 3]

Against `spot sim cloud` (its default restore delay) with `spot sim engine` nodes: hibernate the
tier, send one streamed request through `spot serve` with the official openai SDK, and print when
each step happened, from the client's clock and the store's fleet events: request sent → restore
called → VM active → engine healthy → first token. "Ours" is what is left of the wait once the
provider's restore and the engine's own start-up are taken out: our polling and relaying.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import openai

from spotinference.fleet.records import FleetRecords
from spotinference.store import Store
from tests.fleet_config import sim_tier, write_fleet_config
from tests.servers import ServerProcess, free_port, start_sim_cloud

SPOT = str(Path(sys.executable).with_name("spot"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restore-seconds", type=float, default=15.0)
    parser.add_argument("--load-seconds", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="spot-wake-req-"))
    home = work / "home"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SPOT_")}, "SPOT_HOME": str(home)}
    cloud, root = start_sim_cloud(work / "cloud", "--create-seconds", "2", "--hibernate-seconds", "2",
                                  "--restore-seconds", str(args.restore_seconds))
    demo = sim_tier(sim={"load_seconds": args.load_seconds})
    gateway_settings = {"keepalive_s": 15, "health_interval_s": 2, "provider_refresh_s": 5}
    write_fleet_config(f"{root}/v1", {"demo": demo}, gateway=gateway_settings, path=work / "spot.toml")

    def spot(*argv: str) -> str:
        return subprocess.run([SPOT, *argv], cwd=work, env=env, check=True, capture_output=True, text=True).stdout

    port = free_port()
    gateway = None
    rows = []
    try:
        spot("up", "demo")
        key = json.loads(spot("keys", "create", "bench", "--json"))["key"]
        gateway = ServerProcess([SPOT, "serve", "--port", str(port)], env=env, log_path=work / "gateway.log",
                                health_url=f"http://127.0.0.1:{port}/health")
        os.chdir(work)
        gateway.start()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=700)
        for _ in range(args.runs):
            spot("hibernate", "demo")
            time.sleep(3)  # let the gateway see the tier asleep
            sent = datetime.now(UTC)
            stream = client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=8, stream=True)
            first = None
            for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = datetime.now(UTC)
            rows.append(timeline(home, sent, first))
    finally:
        if gateway:
            gateway.stop()
        subprocess.run([SPOT, "down", "demo", "--terminate", "--yes"], cwd=work, env=env, capture_output=True)
        cloud.stop()

    print(f"\nwake on request (emulator restore {args.restore_seconds:g} s, engine load {args.load_seconds:g} s), "
          "seconds after the request was sent:")
    print(f"{'run':>3}  {'restore called':>14}  {'VM active':>9}  {'engine healthy':>14}  {'first token':>11}  {'ours':>6}")
    for i, row in enumerate(rows, 1):
        ours = row["first_token"] - args.restore_seconds - args.load_seconds
        print(f"{i:>3}  {row['restore_called']:>14.2f}  {row['vm_active']:>9.2f}  {row['engine_healthy']:>14.2f}"
              f"  {row['first_token']:>11.2f}  {ours:>6.2f}")


def timeline(home: Path, sent: datetime, first: datetime | None) -> dict[str, float]:
    events = FleetRecords(Store(home)).events(tier="demo", limit=100)

    def first_after(match) -> float:  # noqa: ANN001
        times = [e.event_at for e in events if e.event_at >= sent and match(e)]
        return (min(times) - sent).total_seconds() if times else float("nan")

    return {
        "restore_called": first_after(lambda e: e.to_state == "waking"),
        "vm_active": first_after(lambda e: e.reason == "VM restored: engine starting"),
        "engine_healthy": first_after(lambda e: e.to_state == "serving"),
        "first_token": (first - sent).total_seconds() if first else float("nan"),
    }


if __name__ == "__main__":
    main()
