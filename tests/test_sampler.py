"""`spot sample`, `spot cron` and doctor's sampler check, end to end against `spot sim cloud`.

The emulator runs at a thousandth of real time, so its clock only moves when a test advances it
and every bill is the one the test expects; resources are made through the real Hyperstack
client. Tests never assert on wall-clock durations.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import httpx
import pytest

from tests.conftest import SPOT, run_spot
from tests.servers import start_sim_cloud

SECRET = "sim-secret-key-4242"
JSON_KEYS = {"ok", "resources", "duration_s", "run_id", "sampled_at", "spend_usd_since_last", "error"}


def write_config(base_url: str) -> None:
    Path("spot.toml").write_text(f"""
[providers.sim]
kind = "hyperstack"
base_url = "{base_url}"
emulator = true
retry_deadline_s = 1
retry_base_s = 0.1
request_timeout_s = 10

[tiers.demo]
provider = "sim"
flavor = "sim-cpu-1"
environment = "sim-local"
engine = "sim"
model = "tiny-chat"
weights_volume = "demo-weights"
weights_volume_gb = 10
max_nodes = 2
""")


class Cloud:
    def __init__(self, root: str) -> None:
        self.root = root

    def state(self) -> dict:
        return httpx.get(f"{self.root}/_sim/state", timeout=10).json()

    def spent(self) -> Decimal:
        return Decimal(self.state()["spent_usd"])

    def bill_of(self, name: str) -> Decimal:
        """One resource's cumulative bill, by name, as the emulator computes it."""
        state = self.state()
        [bill] = [Decimal(r["bill"]["total_usd"]) for r in state["vms"] + state["volumes"] if r["name"] == name]
        return bill

    def advance(self, seconds: float) -> None:
        httpx.post(f"{self.root}/_sim/advance", json={"seconds": seconds}, timeout=10).raise_for_status()

    def fault(self, **fault: object) -> None:
        httpx.post(f"{self.root}/_sim/faults", json=fault, timeout=10).raise_for_status()

    def clear_faults(self) -> None:
        httpx.delete(f"{self.root}/_sim/faults", timeout=10).raise_for_status()


@pytest.fixture
def cloud(tmp_path: Path):
    # A thousandth of real time: the emulated clock stands still unless a test advances it.
    server, root = start_sim_cloud(tmp_path / "cloud", "--time-scale", "0.001", "--create-seconds", "3",
                                   "--delete-seconds", "1")
    write_config(f"{root}/v1")
    yield Cloud(root)
    server.stop()


def provider():  # noqa: ANN201
    from spotinference.config import load_settings
    from spotinference.providers.registry import open_provider

    settings, _ = load_settings(None)
    return open_provider(settings, "sim")


def make_resources(cloud: Cloud) -> str:
    """A tier's VM and weights volumes, and a volume of no tier; returns the VM's id."""
    from spotinference.providers.base import VmSpec

    with provider() as p:
        p.ensure_key_pair("test-key", "sim-local", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test")
        for name in ("demo-weights", "demo-weights-2", "scratch"):
            p.ensure_volume(name, "sim-local", 10)
        vm = p.create_vm(VmSpec(name="spot-demo-1", flavor="sim-cpu-1", environment="sim-local", key_name="test-key"))
    cloud.advance(125)  # past creation, and two billed minutes
    return vm.provider_id


def sample_json(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], dict]:
    result = run_spot("sample", "--json", *args, env=env)
    return result, json.loads(result.stdout)


def rows(home: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(home / "spot.duckdb"), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def test_a_run_writes_one_row_per_resource_with_its_tier_and_one_run_row(cloud: Cloud, home: Path) -> None:
    vm_id = make_resources(cloud)
    first, data = sample_json()
    assert first.returncode == 0, first.stderr
    assert JSON_KEYS <= set(data)
    assert data["ok"] is True and data["error"] is None and data["resources"] == 4
    assert isinstance(data["duration_s"], float) and data["duration_s"] > 0
    assert data["spend_usd_since_last"] is None  # nothing to compare the first run with
    spent_first = cloud.spent()
    scratch_first = cloud.bill_of("scratch")

    [run] = rows(home, "SELECT run_id, provider, ok, error, resource_count, started_at <= finished_at FROM sample_runs")
    assert run == (data["run_id"], "sim", True, None, 4, True)
    samples = rows(home, "SELECT name, resource_type, tier, usd_per_hour, total_bill_usd, active, raw, sampled_at "
                         "FROM billing_samples WHERE run_id = ? ORDER BY name", [data["run_id"]])
    assert [(s[0], s[1], s[2]) for s in samples] == [
        ("demo-weights", "volume", "demo"),
        ("demo-weights-2", "volume", "demo"),  # node 2's numbered twin
        ("scratch", "volume", None),  # no tier's volume
        ("spot-demo-1", "vm", "demo"),
    ]
    state = cloud.state()
    bills = {v["name"]: Decimal(v["bill"]["total_usd"]) for v in state["vms"] + state["volumes"]}
    for name, _, _, usd_per_hour, total, active, raw, sampled_at in samples:
        assert total == bills[name].quantize(Decimal("0.000001")) and total > 0
        assert active is True and usd_per_hour > 0
        assert json.loads(raw)["name"] == name  # the provider's item, kept whole
        assert sampled_at.isoformat() == data["sampled_at"]
    assert next(s for s in samples if s[0] == "spot-demo-1")[3] == Decimal("0.5")  # $/h of sim-cpu-1 (hourly, not per minute)

    # A deleted resource stays in the samples, inactive and with no rate.
    with provider() as p:
        p.delete_vm(vm_id)
    cloud.advance(180)
    second, data2 = sample_json()
    assert second.returncode == 0 and data2["ok"] is True and data2["resources"] == 4
    # The spend since the last run is the emulator's own bill delta (to the micro-dollar per resource):
    # the fleet's (the headline), and the whole account's, which includes the volume outside the fleet.
    account_delta = cloud.spent() - spent_first
    fleet_delta = account_delta - (cloud.bill_of("scratch") - scratch_first)
    assert abs(Decimal(str(data2["account_usd_since_last"])) - account_delta) <= Decimal("0.000004")
    assert abs(Decimal(str(data2["spend_usd_since_last"])) - fleet_delta) <= Decimal("0.000003")
    assert Decimal(str(data2["spend_usd_since_last"])) < Decimal(str(data2["account_usd_since_last"]))
    [vm_row] = rows(home, "SELECT active, usd_per_hour, tier FROM billing_samples WHERE run_id = ? AND resource_type = 'vm'",
                    [data2["run_id"]])
    assert vm_row == (False, None, "demo")
    assert rows(home, "SELECT count(*) FROM sample_runs WHERE ok")[0][0] == 2


def test_an_empty_account_is_an_ok_run_with_no_resources(cloud: Cloud, home: Path) -> None:
    result, data = sample_json()
    assert result.returncode == 0, result.stderr
    assert data["ok"] is True and data["resources"] == 0 and data["error"] is None
    assert rows(home, "SELECT provider, ok, error, resource_count FROM sample_runs") == [("sim", True, None, 0)]
    assert rows(home, "SELECT count(*) FROM billing_samples") == [(0,)]
    plain = run_spot("sample")
    assert plain.returncode == 0 and plain.stdout.startswith("sampled 0 resource(s)")


def test_a_failing_provider_records_a_failed_run_and_exits_non_zero_with_one_line(cloud: Cloud, home: Path) -> None:
    make_resources(cloud)
    cloud.fault(kind="server_error", count=1000, status=500)  # far longer than the 1 s retry deadline
    env = {"SPOT_PROVIDERS__SIM__API_KEY": SECRET}
    result, data = sample_json(env=env)
    cloud.clear_faults()
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "500" in lines[0] and "billing" in lines[0]
    assert data["ok"] is False and data["resources"] == 0 and "500" in data["error"]
    [run] = rows(home, "SELECT run_id, ok, error, resource_count FROM sample_runs")
    assert run[0] == data["run_id"] and run[1] is False and run[3] == 0 and "500" in run[2]
    assert "\n" not in run[2]
    assert rows(home, "SELECT count(*) FROM billing_samples") == [(0,)]  # all or nothing
    assert SECRET not in result.stdout + result.stderr + run[2]

    # The provider is back: the next run is ok and the failed one stays on record.
    again, data = sample_json(env=env)
    assert again.returncode == 0 and data["ok"] is True and data["resources"] == 4
    assert rows(home, "SELECT ok, count(*) FROM sample_runs GROUP BY ok ORDER BY ok") == [(False, 1), (True, 1)]


def _lock_held(home: Path) -> bool:
    path = home / "sample.lock"
    if not path.exists():
        return False
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def test_two_overlapping_runs_do_not_double_write(cloud: Cloud, home: Path) -> None:
    make_resources(cloud)
    cloud.fault(kind="slow", count=1, delay_s=4, path_prefix="/v1/billing")  # the first run's read hangs
    patient = {**os.environ, "SPOT_PROVIDERS__SIM__RETRY_DEADLINE_S": "30"}  # it waits out the slow answer
    slow = subprocess.Popen([str(SPOT), "sample", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=patient)
    deadline = time.monotonic() + 30
    while not _lock_held(home):
        assert slow.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.05)

    second, data = sample_json()
    assert second.returncode == 0, second.stderr  # another run is recording this minute: not a failure
    assert data["skipped"] is True and data["run_id"] is None and data["resources"] == 0
    assert second.stderr.count("\n") == 1 and "in progress" in second.stderr

    out, err = slow.communicate(timeout=60)
    assert slow.returncode == 0, err
    first = json.loads(out)
    assert first["ok"] is True and first["resources"] == 4
    assert rows(home, "SELECT run_id FROM sample_runs") == [(first["run_id"],)]
    assert rows(home, "SELECT count(*), count(DISTINCT run_id) FROM billing_samples") == [(4, 1)]


def test_every_keeps_sampling_through_a_failure_and_stops_cleanly_on_ctrl_c(cloud: Cloud, home: Path) -> None:
    cloud.fault(kind="server_error", count=1000, status=503)
    loop = subprocess.Popen([str(SPOT), "sample", "--every", "1", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        outcomes: list[bool] = []
        while not (outcomes and outcomes[0] is False and outcomes[-1] is True):
            line = loop.stdout.readline()  # one JSON object per run ("" if the loop died)
            assert line, f"the loop stopped after {outcomes}"
            outcomes.append(json.loads(line)["ok"])
            if outcomes == [False]:
                cloud.clear_faults()  # the provider recovers; the loop must carry on
    finally:
        loop.send_signal(signal.SIGINT)
        _, err = loop.communicate(timeout=30)
    assert loop.returncode == 0
    assert "stopped" in err and "Traceback" not in err
    recorded = rows(home, "SELECT ok FROM sample_runs ORDER BY started_at")
    assert recorded[0] == (False,) and (True,) in recorded


def test_cron_prints_a_crontab_line_and_a_systemd_timer_with_absolute_paths(cloud: Cloud, home: Path) -> None:
    result = run_spot("cron")
    assert result.returncode == 0, result.stderr
    config = str(Path("spot.toml").resolve())
    [line] = [x for x in result.stdout.splitlines() if x.startswith("* * * * * ")]
    assert f"{SPOT} --config {config} sample" in line
    assert f"SPOT_HOME={home}" in line and f">> {home}/sample.log 2>&1" in line
    assert os.path.isabs(str(SPOT))
    assert "OnCalendar=minutely" in result.stdout and "[Timer]" in result.stdout and "Type=oneshot" in result.stdout
    assert f"ExecStart={SPOT} --config {config} sample" in result.stdout

    data = json.loads(run_spot("cron", "--json").stdout)
    assert data["crontab"] == line
    assert set(data["systemd"]) == {"spot-sample.service", "spot-sample.timer"}
    assert "OnCalendar=minutely" in data["systemd"]["spot-sample.timer"]


def test_cron_carries_the_spot_settings_in_effect_and_never_a_secret(cloud: Cloud, home: Path) -> None:
    # The config names a dead provider address; the operator's shell overrides it with a SPOT_*
    # variable. Cron and systemd see none of that shell, so the printed lines must carry it.
    make_resources(cloud)  # (while ./spot.toml still points at this test's emulator)
    config = Path("conf/sim.toml")
    config.parent.mkdir()
    config.write_text(Path("spot.toml").read_text().replace(f"{cloud.root}/v1", "http://127.0.0.1:9/v1"))
    Path("spot.toml").unlink()
    token = "operator-secret-5150"
    env = {"SPOT_CONFIG": "conf/sim.toml", "SPOT_PROVIDERS__SIM__BASE_URL": f"{cloud.root}/v1",
           "SPOT_GATEWAY__PORT": "18123", "SPOT_GATEWAY__OPERATOR_TOKEN": token,
           "SPOT_TIERS__DEMO__VLLM__ENV__HF_TOKEN": "hf_env-secret-1414"}

    result = run_spot("cron", env=env)
    assert result.returncode == 0, result.stderr
    [line] = [x for x in result.stdout.splitlines() if x.startswith("* * * * * ")]
    assert f"SPOT_HOME={home}" in line and "SPOT_GATEWAY__PORT=18123" in line
    assert f"SPOT_PROVIDERS__SIM__BASE_URL={cloud.root}/v1" in line
    assert f"--config {config.resolve()} sample" in line  # SPOT_CONFIG, made absolute
    assert "Environment=SPOT_GATEWAY__PORT=18123" in result.stdout
    assert f"Environment=SPOT_PROVIDERS__SIM__BASE_URL={cloud.root}/v1" in result.stdout
    assert token not in result.stdout + result.stderr and "OPERATOR_TOKEN" not in result.stdout
    assert "hf_env-secret-1414" not in result.stdout + result.stderr and "HF_TOKEN" not in result.stdout
    note, hf_note = result.stderr.splitlines()
    assert note.startswith("spot cron: note: $SPOT_GATEWAY__OPERATOR_TOKEN is a secret, so it is not written")
    assert hf_note.startswith("spot cron: note: $SPOT_TIERS__DEMO__VLLM__ENV__HF_TOKEN is a secret")
    assert "gateway.operator_token_file" in note and "EnvironmentFile=" in note
    data = json.loads(run_spot("cron", "--json", env=env).stdout)
    assert data["crontab"] == line and token not in json.dumps(data) and "hf_env-secret-1414" not in json.dumps(data)
    assert data["environment"] == ["SPOT_HOME", "SPOT_GATEWAY__PORT", "SPOT_PROVIDERS__SIM__BASE_URL"]

    # Run the line as cron does: its own shell, an environment without any SPOT_* variable.
    command = line.removeprefix("* * * * * ").replace("\\%", "%")
    ran = subprocess.run(["sh", "-c", command], env={"PATH": "/usr/bin:/bin"}, cwd="/", timeout=120)
    assert ran.returncode == 0, (home / "sample.log").read_text()
    assert "sampled 4 resource(s)" in (home / "sample.log").read_text()
    assert rows(home, "SELECT ok FROM sample_runs") == [(True,)]

    if shutil.which("systemd-analyze"):
        units = Path("units")
        units.mkdir()
        for name, text in data["systemd"].items():
            (units / name).write_text(text)
        verify = subprocess.run(["systemd-analyze", "verify", "--man=no", *(str(units / n) for n in sorted(data["systemd"]))],
                                capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0 and verify.stderr == "", verify.stderr


def test_cron_says_when_spot_sample_needs_a_key_it_cannot_carry(home: Path) -> None:
    Path("spot.toml").write_text("""
[providers.hs]
base_url = "https://infrahub.example/v1"

[tiers.big]
provider = "hs"
flavor = "n3-H100x1"
environment = "CANADA-1"
model = "m"
""")
    key = "hs-live-key-8086"
    result = run_spot("cron", env={"SPOT_PROVIDERS__HS__API_KEY": key})
    assert result.returncode == 0, result.stderr
    assert key not in result.stdout + result.stderr and "API_KEY" not in result.stdout
    [note] = result.stderr.splitlines()
    assert note.startswith("spot cron: note: $SPOT_PROVIDERS__HS__API_KEY is a secret, so it is not written into "
                           "these lines (spot sample needs it): ")
    assert "set providers.hs.api_key_file in the config" in note


def test_doctor_reports_the_age_of_the_last_good_sample(cloud: Cloud, home: Path) -> None:
    from spotinference.config import load_settings
    from spotinference.doctor import check_sampler

    def sampler_check() -> dict:
        report = json.loads(run_spot("doctor", "--json").stdout)
        return next(c for c in report["checks"] if c["name"] == "sampler")

    fresh = sampler_check()
    assert fresh["ok"] is True and fresh["detail"].startswith("no billing sample yet") and fresh["warning"] and "spot cron" in fresh["detail"]

    assert run_spot("sample").returncode == 0
    recent = sampler_check()
    assert recent["ok"] is True and "sim:" in recent["detail"] and "s ago" in recent["detail"]

    settings, _ = load_settings(None)
    later = check_sampler(settings, now=datetime.now(UTC) + timedelta(seconds=settings.budget.max_sample_age_s + 60))
    assert later.ok is False and "spot cron" in later.fix and "spot sample --every 60" in later.fix

    # A failed run is not a good sample: the age is still the last ok run's.
    cloud.fault(kind="server_error", count=1000, status=500)
    assert run_spot("sample").returncode != 0
    cloud.clear_faults()
    assert check_sampler(settings, now=datetime.now(UTC) + timedelta(seconds=settings.budget.max_sample_age_s + 60)).ok is False


# -- the library alone: an injected provider, no emulator ---------------------------------------

def _settings(home: Path):  # noqa: ANN202
    from spotinference.config import Settings

    return Settings(home=home, providers={"sim": {"emulator": True}})


def test_a_run_that_finds_the_lock_held_writes_nothing(home: Path) -> None:
    from spotinference.billing.sampler import LOCK_FILE, sample
    from spotinference.store import Store

    def never(settings, name):  # noqa: ANN001, ANN202
        raise AssertionError("a skipped run must not call the provider")

    home.mkdir(parents=True, exist_ok=True)
    with (home / LOCK_FILE).open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = sample(_settings(home), Store(home), provider_factory=never)
    assert result.skipped is True and result.ok is True and result.runs == ()
    assert "in progress" in (result.skipped_because or "")
    assert not (home / "spot.duckdb").exists() or rows(home, "SELECT count(*) FROM sample_runs") == [(0,)]


def test_an_unexpected_provider_exception_is_recorded_as_a_failed_run(home: Path) -> None:
    from spotinference.billing.sampler import sample
    from spotinference.store import Store

    def broken(settings, name):  # noqa: ANN001, ANN202
        raise RuntimeError("boom\nsecond line")

    moments = iter(datetime(2025, 1, 15, 10, 0, s, tzinfo=UTC) for s in range(10))
    result = sample(_settings(home), Store(home), provider_factory=broken, clock=lambda: next(moments))
    assert result.ok is False and result.exit_code == 70
    assert result.error == "sim: internal error: RuntimeError: boom second line"
    assert rows(home, "SELECT ok, error, resource_count, started_at, finished_at FROM sample_runs") == [
        (False, "internal error: RuntimeError: boom second line", 0,
         datetime(2025, 1, 15, 10, 0, 0, tzinfo=UTC), datetime(2025, 1, 15, 10, 0, 1, tzinfo=UTC))]
