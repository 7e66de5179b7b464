"""How long a wake takes, state by state, against `spot sim cloud` with its default delays.

    .venv/bin/python -m tests.benchmarks.wake_timing [--restore-seconds 15] [--load-seconds 2] [--runs 3]

Runs `spot up`, then `spot hibernate` / `spot wake` cycles, and prints, for each wake, the time
in each state from the store's fleet events: the restore call, the provider restoring the VM,
the engine starting until /health answers; and the bound the fleet promises: restore + engine
start-up + 5 s of our own polling.

    .venv/bin/python -m tests.benchmarks.wake_timing --real-nodes [--runs 2]   (as root)

On a real node (`spot sim cloud --real-nodes`, vLLM's CPU build, the tiny model; the set-up of
tests/test_real_node_e2e.py): `spot up`, `spot serve`, then for each run `spot hibernate` and a
streamed request through the gateway that wakes the node. Prints, from the request: the restore
call (fleet event), the node booted (its sshd up, systemd's clock), the unit started (systemd),
the engine healthy (vLLM's "Application startup complete" in the journal), spot marking it serving,
and the first token; then spot's own share: the total less the boot (restore call → unit started)
and the engine load (unit started → healthy). The target is ≤ 5 s.
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
    parser.add_argument("--real-nodes", action="store_true", help="the wake of a real node with real vLLM (root)")
    args = parser.parse_args()
    if args.real_nodes:
        real_node_wakes(args.runs)
        return

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


def real_node_wakes(runs: int) -> None:
    import threading

    from spotinference.sim.realnode import RealNode
    from spotinference.sim.realnode.image import ensure_image
    from spotinference.sim.realnode.wheelhouse import ensure_wheelhouse
    from tests.engines.real_vllm import REQUIREMENTS, build_tiny_model, ensure_vllm_installed
    from tests.servers import ServerProcess, clean_env, free_port
    from tests.sshd import keygen
    from tests.real_node_fleet import (CLOUD_FLAGS, MODEL, address_nodes_reach, copy_model_when_mounted,
                                       write_config)
    from tests.test_scale_to_zero import start_gateway, wait_for

    work = Path(tempfile.mkdtemp(prefix="spot-wake-real-"))
    os.environ["SPOT_HOME"] = str(work / "home")
    (work / "work").mkdir()
    os.chdir(work / "work")  # write_config writes ./spot.toml
    ensure_image()
    ensure_vllm_installed()
    model_dir = build_tiny_model()
    port = free_port()
    wheels = ServerProcess([sys.executable, "-m", "http.server", str(port), "--bind", "0.0.0.0", "--directory",
                            str(ensure_wheelhouse(REQUIREMENTS).path)], env=clean_env(work), log_path=work / "http.log",
                           health_url=f"http://127.0.0.1:{port}/").start()
    key = keygen(work / "id_ed25519")
    server, root = start_sim_cloud(work / "cloud", *CLOUD_FLAGS)
    write_config(f"{root}/v1", key, f"http://{address_nodes_reach()}:{port}/")
    nodes_dir = work / "cloud" / "sim-cloud" / "nodes"
    gateway = None
    rows = []
    try:
        up = threading.Thread(target=subprocess.run, args=([SPOT, "up", "demo"],), kwargs={"check": True, "capture_output": True})
        up.start()
        wait_for(lambda: any(nodes_dir.glob("*/node.json")), 120, "the VM's node")
        node_dir = next(nodes_dir.glob("*/node.json")).parent
        copied: dict = {}
        threading.Thread(target=copy_model_when_mounted, args=(node_dir, model_dir, copied, threading.Event()),
                         daemon=True).start()
        up.join()
        gateway = start_gateway(work, work / "home")
        wait_for(lambda: gateway.tier("demo")["state"] == "serving", 60, "the gateway to serve")
        for _ in range(runs):
            subprocess.run([SPOT, "hibernate", "demo"], check=True, capture_output=True)
            wait_for(lambda: not RealNode.open(node_dir).is_running(), 120, "the node to power off")
            time.sleep(3)  # the gateway's view settles on hibernated
            rows.append(real_node_wake(gateway, RealNode.open(node_dir), MODEL, work / "home"))
    finally:
        if gateway is not None:
            gateway.server.stop()
        subprocess.run([SPOT, "down", "demo", "--terminate", "--yes"], capture_output=True)
        server.stop()
        wheels.stop()
        for leftover in nodes_dir.glob("*/node.json"):
            RealNode.open(leftover.parent).delete()

    names = ("restore call", "node booted", "unit started", "engine healthy", "spot: serving", "first token")
    print("\nreal-node wake, seconds from the request (each phase's length in brackets):")
    for i, marks in enumerate(rows, 1):
        cells, previous = [], 0.0
        for name in names:
            cells.append(f"{name} {marks[name]:.1f} ({marks[name] - previous:+.1f})")
            previous = marks[name]
        boot = marks["unit started"] - marks["restore call"]
        load = marks["engine healthy"] - marks["unit started"]
        share = marks["first token"] - boot - load
        print(f"run {i}: " + " → ".join(cells))
        print(f"       boot {boot:.1f} s, engine load {load:.1f} s, spot's own share {share:.1f} s (target ≤ 5 s)")


def real_node_wake(gateway, node, model: str, home: Path) -> dict[str, float]:  # noqa: ANN001
    """The marks of one wake, in seconds from the request: host and node share one monotonic clock."""
    import datetime as dt
    import json

    import openai

    from spotinference.fleet.records import FleetRecords
    from spotinference.store import Store

    wall_started, started = dt.datetime.now(dt.timezone.utc), time.monotonic()
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=900) as client:
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "wake"}],
                                                max_tokens=4, stream=True, extra_body={"ignore_eos": True})
        first_token = None
        for chunk in stream:
            if first_token is None and chunk.choices and chunk.choices[0].delta.content:
                first_token = time.monotonic() - started
    assert first_token is not None, "the wake's stream carried no token"

    def systemd_mark(unit: str, prop: str) -> float:
        micros = int(node.run_inside(["systemctl", "show", "-p", prop, "--value", unit]).strip())
        return micros / 1e6 - started

    ready = node.run_inside(["journalctl", "-u", "spot-engine", "-b", "-o", "json", "--output-fields=MESSAGE",
                             "--grep", "Application startup complete", "-n", "1"]).strip().splitlines()[-1]
    events = FleetRecords(Store(home)).events(tier="demo", limit=200)

    def event_mark(match) -> float:  # noqa: ANN001
        return (min(e.event_at for e in events if e.event_at >= wall_started and match(e)) - wall_started).total_seconds()

    return {
        "restore call": event_mark(lambda e: e.to_state == "waking"),
        "node booted": systemd_mark("ssh", "ActiveEnterTimestampMonotonic"),
        "unit started": systemd_mark("spot-engine", "ExecMainStartTimestampMonotonic"),
        "engine healthy": int(json.loads(ready)["__MONOTONIC_TIMESTAMP"]) / 1e6 - started,
        "spot: serving": event_mark(lambda e: e.to_state == "serving"),
        "first token": first_token,
    }


if __name__ == "__main__":
    main()
