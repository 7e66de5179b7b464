"""The budget gate in a running gateway, against `spot sim cloud` and a real `spot sample` loop:
stale billing closes it (503 billing_unobservable) and fresh samples reopen it; a spent daily
budget closes it (429 budget_exhausted) and hibernates the fleet."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from spotinference.billing.sampler import sample as sample_billing
from spotinference.config import load_settings
from spotinference.store import Store
from tests.conftest import SPOT
from tests.servers import operator_headers, start_sim_cloud
from tests.test_fleet import Cloud, ok
from tests.test_scale_to_zero import MODEL, Gateway, start_gateway, vm_status, wait_for, write_config


def with_budget(daily_usd: str | None, *, max_sample_age_s: int = 3) -> None:
    budget = "" if daily_usd is None else f"daily_usd = {daily_usd}\n"
    Path("spot.toml").write_text(Path("spot.toml").read_text() + f"""
[budget]
{budget}max_sample_age_s = {max_sample_age_s}
refresh_s = 0.5
""")


class Sampler:
    """`spot sample --every 1` in the background, as an operator without cron would run it."""

    def __init__(self, workdir: Path) -> None:
        self.log = (workdir / "sampler.log").open("ab")
        self.proc = subprocess.Popen([str(SPOT), "sample", "--every", "1"], stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def ask(gateway: Gateway) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {gateway.key}"},
                      json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}, timeout=60)


def gate(gateway: Gateway) -> dict:
    return httpx.get(f"{gateway.url}/health", headers=operator_headers(gateway.home), timeout=5).json()["budget_gate"]


@pytest.fixture
def cloud(tmp_path: Path):
    server, root = start_sim_cloud(tmp_path / "cloud", "--create-seconds", "1", "--hibernate-seconds", "1",
                                   "--restore-seconds", "2", "--delete-seconds", "0.5")
    cloud = Cloud(f"{root}/v1", server)
    yield cloud
    ok("down", "demo", "--terminate", "--yes")
    server.stop()


@pytest.mark.parametrize("daily_usd", ["1000", None], ids=["with-a-budget", "no-budget"])
def test_stale_billing_closes_the_gate_and_fresh_samples_reopen_it(cloud: Cloud, tmp_path: Path, home: Path,
                                                                  daily_usd: str | None) -> None:
    # Serving blind is an outage whether or not a budget is set.
    write_config(cloud.base_url, fallback=False, gate=True)
    with_budget(daily_usd)
    ok("up", "demo")
    sampler = Sampler(tmp_path)
    gateway = start_gateway(tmp_path, home)
    try:
        wait_for(lambda: gate(gateway)["open"], 30, "the gate to open on fresh samples")
        answer = ask(gateway)
        assert answer.status_code == 200, answer.text

        sampler.stop()  # billing is now unobservable: serving blind is refused
        wait_for(lambda: not gate(gateway)["open"], 30, "the gate to close")
        state = gate(gateway)
        assert state["reason"] == "billing_unobservable" and float(state["sample_age_s"]) > 3
        refused = ask(gateway)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
        assert refused.json()["error"]["code"] == "billing_unobservable"
        # Anyone's /health says the gate is closed, and nothing more (no figures, no models).
        assert httpx.get(f"{gateway.url}/health", timeout=5).json() == {"status": "closed"}
        metrics = httpx.get(f"{gateway.url}/metrics", headers=operator_headers(gateway.home)).text
        assert 'spot_budget_gate_open{reason="billing_unobservable"} 0.0' in metrics

        sampler = Sampler(tmp_path)  # samples are fresh again: the gate reopens by itself
        wait_for(lambda: gate(gateway)["open"], 30, "the gate to reopen")
        answer = ask(gateway)
        assert answer.status_code == 200, answer.text

        # A sampler whose clock runs ten minutes ahead writes a sample dated in the future: that
        # is a clock fault, not a fresh sample, and it closes the gate.
        sampler.stop()
        settings, _ = load_settings(None)
        ahead = datetime.now(UTC) + timedelta(minutes=10)
        assert sample_billing(settings, Store(settings.home), clock=lambda: ahead).ok
        wait_for(lambda: gate(gateway)["reason"] == "billing_unobservable", 30, "the clock fault to close the gate")
        assert gate(gateway)["clock_fault"] is True and "future" in gate(gateway)["message"]
        refused = ask(gateway)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "billing_unobservable"
    finally:
        sampler.stop()
        gateway.server.stop()


def test_a_spent_budget_closes_the_gate_and_hibernates_the_fleet(cloud: Cloud, tmp_path: Path, home: Path) -> None:
    write_config(cloud.base_url, fallback=False, gate=True)
    # Above the projected burn over one sampling interval ($0.50/h for 1 s), below one billed
    # minute of sim-cpu-1 ($0.0083).
    with_budget("0.005", max_sample_age_s=30)
    ok("up", "demo")
    sampler = Sampler(tmp_path)
    gateway = start_gateway(tmp_path, home)
    try:
        wait_for(lambda: gate(gateway)["open"], 30, "a first sample under budget")
        answer = ask(gateway)
        assert answer.status_code == 200, answer.text
        # The emulator bills a few minutes at once; the next sample sees the spend.
        httpx.post(f"{cloud.root}/_sim/advance", json={"seconds": 180}, timeout=5).raise_for_status()
        wait_for(lambda: gate(gateway)["reason"] == "budget_exhausted", 60, "the budget to be spent")
        refused = ask(gateway)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exhausted"
        assert int(refused.headers["retry-after"]) > 0
        wait_for(lambda: vm_status(cloud, "spot-demo-1") == "HIBERNATED", 60, "the fleet to hibernate")
    finally:
        sampler.stop()
        gateway.server.stop()
