"""`spot doctor`'s checks of what runs: the gateway, the provider (or the emulator), each tier's
engines. Nothing running is a warning with its fix (a fresh machine has started nothing); a thing
that runs but answers wrongly is a failure (✗) with its fix."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.conftest import run_spot
from tests.servers import free_port
from tests.test_fleet import Cloud, ok
from tests.test_scale_to_zero import fleet, start_gateway, write_config  # noqa: F401 - fleet is a fixture


def doctor(**env: str) -> tuple[int, dict[str, dict]]:
    result = run_spot("doctor", "--json", env=env)
    report = json.loads(result.stdout)
    assert report["ok"] is (result.returncode == 0), result.stdout
    return result.returncode, {c["name"]: c for c in report["checks"]}


def test_nothing_running_is_a_warning_with_its_fix_not_a_failure(spot) -> None:
    # Ports nobody listens on, so the test does not depend on what else runs on this machine.
    env = {"SPOT_GATEWAY__PORT": str(free_port()), "SPOT_PROVIDERS__SIM__BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}
    code, checks = doctor(**env)
    assert code == 0
    gateway = checks["gateway"]
    assert gateway["ok"] and gateway["warning"] and "not running" in gateway["detail"]
    assert gateway["fix"] == "start it with `spot serve`"
    emulator = checks["provider sim api"]
    assert emulator["ok"] and emulator["warning"] and "spot sim cloud" in emulator["fix"]
    for tier in ("demo", "demo-ondemand"):
        assert checks[f"engines {tier}"]["warning"] and "spot sim cloud" in checks[f"engines {tier}"]["fix"]
    # The table says it too, with each fix, and no ✗.
    table = spot("doctor", env=env)
    assert table.returncode == 0 and "✗" not in table.stdout
    assert "not running" in table.stdout and "spot serve" in table.stdout


def test_a_real_provider_that_does_not_answer_is_a_failure(spot) -> None:
    Path("spot.toml").write_text(
        f'[providers.hs]\nkind = "hyperstack"\nbase_url = "http://127.0.0.1:{free_port()}/v1"\n'
        '[ssh]\nkey_path = "/nonexistent/id_ed25519"\n'
        '[tiers.q]\nprovider = "hs"\nflavor = "n3-H100x1"\nenvironment = "e"\nmodel = "q"\n'
    )
    code, checks = doctor(SPOT_PROVIDERS__HS__API_KEY="k")
    assert code == 1
    api = checks["provider hs api"]
    assert api["ok"] is False and not api["warning"] and "did not answer" in api["detail"]
    assert "base_url" in api["fix"]


@pytest.mark.slow
def test_doctor_sees_the_emulator_the_gateway_and_each_tiers_engines(fleet: Cloud, tmp_path: Path, home: Path) -> None:  # noqa: F811
    write_config(fleet.base_url)
    env = {"SPOT_GATEWAY__PORT": str(free_port())}

    code, checks = doctor(**env)
    assert code == 0
    assert checks["provider sim api"]["ok"] and not checks["provider sim api"]["warning"]
    assert "reachable" in checks["provider sim api"]["detail"] and "sim-cpu-1" in checks["provider sim api"]["detail"]
    assert checks["engines demo"]["warning"] and "spot up demo" in checks["engines demo"]["fix"]

    ok("up", "demo")
    gateway = start_gateway(tmp_path, home)
    env["SPOT_GATEWAY__PORT"] = gateway.url.rsplit(":", 1)[1]
    try:
        code, checks = doctor(**env)
        assert code == 0, checks
        assert checks["gateway"]["ok"] and not checks["gateway"]["warning"]
        assert "running at" in checks["gateway"]["detail"] and "demo serving" in checks["gateway"]["detail"]
        engines = checks["engines demo"]
        assert engines["ok"] and not engines["warning"] and "1 serving (spot-demo-1)" in engines["detail"]

        # The engine dies on a running VM: a failure, with the commands that fix it.
        [vm] = [v for v in fleet.vms() if v["name"] == "spot-demo-1"]
        [pid_file] = list((tmp_path / "cloud" / "sim-cloud").glob("nodes/*/run/spot-engine.pid"))
        os.killpg(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        code, checks = doctor(**env)
        assert code == 1
        engines = checks["engines demo"]
        assert engines["ok"] is False and "does not answer /health" in engines["detail"]
        assert "spot up demo" in engines["fix"] and "spot wake demo" in engines["fix"] and "spot logs spot-demo-1" in engines["fix"]
        table = run_spot("doctor", env=env)
        assert table.returncode == 1 and "✗" in table.stdout and "spot up demo" in table.stdout
        assert vm["status"] == "ACTIVE"
    finally:
        gateway.server.stop()
