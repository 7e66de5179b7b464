"""The Hyperstack provider against the real cloud emulator (`spot sim cloud`), over real HTTP.

Time: the client's clock and sleep are injected. ``FakeTime`` never sleeps for real; it moves
the client's clock and (where a test asks) the emulator's clock by the same amount through
``POST /_sim/advance``, so waits of minutes run in milliseconds and nothing asserts on wall time.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from spotinference.config.settings import Settings
from spotinference.errors import ConfigError
from spotinference.providers import (
    FirewallRule,
    InsufficientCapacityError,
    ProviderAuthError,
    ProviderError,
    ProviderNotFoundError,
    ProviderRateLimitedError,
    ProviderUnavailableError,
    Vm,
    VmPhase,
    VmSpec,
)
from spotinference.providers.hyperstack import HyperstackProvider
from spotinference.providers.hyperstack_mapping import parse_time, phase_of, vm_from
from spotinference.providers.registry import open_provider
from tests.servers import free_port, start_sim_cloud

SECRET = "sk-DISTINCTIVE-7f3a9c-never-log-me"
ENV = "sim-local"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq0bYu0dcbHRuJk0QKoC7o7b1Xh1rW4n7mQ2r9Vb3Zx spot@test"
_names = Counter[str]()


def unique(stem: str) -> str:
    _names[stem] += 1
    return f"t-{stem}-{_names[stem]}"


class FakeTime:
    """An injected clock and sleep: sleeping moves the clock (and optionally the emulator's)."""

    def __init__(self, admin: httpx.Client | None = None) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.admin = admin  # when set, each sleep also advances the emulated cloud

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.admin is not None:
            self.admin.post("/_sim/advance", json={"seconds": seconds}).raise_for_status()


class RealTime(FakeTime):
    """The real monotonic clock and sleep, for the one test where the server's own timing matters."""

    def clock(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        time.sleep(seconds)


class Cloud:
    """The emulator's base URL (…/v1) and an admin client on its root."""

    def __init__(self, url: str) -> None:
        self.root = url.rstrip("/").removesuffix("/v1")
        self.base_url = f"{self.root}/v1"
        self.admin = httpx.Client(base_url=self.root, timeout=10)

    def fault(self, **fault: Any) -> None:
        self.admin.post("/_sim/faults", json=fault).raise_for_status()

    def clear_faults(self) -> None:
        self.admin.delete("/_sim/faults").raise_for_status()

    def advance(self, seconds: float) -> None:
        self.admin.post("/_sim/advance", json={"seconds": seconds}).raise_for_status()

    def state(self) -> dict[str, Any]:
        response = self.admin.get("/_sim/state")
        response.raise_for_status()
        return response.json()

    def requests(self, key: str) -> int:
        return self.state()["requests"].get(key, 0)

    def vms_named(self, name: str) -> list[dict[str, Any]]:
        return [vm for vm in self.state()["vms"] if vm.get("name") == name and _exists(vm)]

    def raw(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.base_url}{path}", params=params, headers={"api_key": SECRET}, timeout=10)
        response.raise_for_status()
        return json.loads(response.text, parse_float=Decimal)


def _exists(vm: dict[str, Any]) -> bool:
    return vm.get("terminated_us") is None and vm.get("status") not in ("GONE", "DELETED")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    workdir = tmp_path_factory.mktemp("sim-cloud")
    server, base_url = start_sim_cloud(
        workdir, "--api-key", SECRET, "--create-seconds", "60", "--hibernate-seconds", "30",
        "--restore-seconds", "40", "--delete-seconds", "10",
    )
    cloud = Cloud(base_url)
    yield cloud
    cloud.admin.close()
    server.stop()


@pytest.fixture(autouse=False)
def clean_faults(cloud: Cloud) -> Iterator[None]:
    cloud.clear_faults()
    yield
    cloud.clear_faults()


def make_provider(base_url: str, timer: FakeTime | None = None, **overrides: Any) -> HyperstackProvider:
    config = {"base_url": base_url, "api_key": SECRET, "retry_base_s": 1.0, "retry_deadline_s": 120.0,
              "request_timeout_s": 10.0, **overrides}
    settings = Settings(providers={"sim": config})
    timer = timer or FakeTime()
    provider = open_provider(settings, "sim", clock=timer.clock, sleep=timer.sleep)
    assert isinstance(provider, HyperstackProvider)
    return provider


@pytest.fixture
def fake_time(cloud: Cloud) -> FakeTime:
    return FakeTime(cloud.admin)


@pytest.fixture
def provider(cloud: Cloud, fake_time: FakeTime, clean_faults: None) -> Iterator[HyperstackProvider]:
    with make_provider(cloud.base_url, fake_time) as provider:
        provider.ensure_key_pair("spot-test", ENV, PUBLIC_KEY)
        yield provider


def spec(name: str, **overrides: Any) -> VmSpec:
    values: dict[str, Any] = {"name": name, "flavor": "n3-H100x1", "environment": ENV, "key_name": "spot-test",
                              "labels": ("spot", "tier-test")}
    values.update(overrides)
    return VmSpec(**values)


def wait_for(provider: HyperstackProvider, cloud: Cloud, vm_id: str, done, *, step_s: float = 5.0,
             limit: int = 200) -> Vm | None:
    """Poll get_vm, advancing the emulated clock between polls, until ``done(vm)``."""
    for _ in range(limit):
        vm = provider.get_vm(vm_id)
        if done(vm):
            return vm
        cloud.advance(step_s)
    raise AssertionError(f"VM {vm_id} never reached the expected state; last: {vm}")


def ready(vm: Vm | None) -> bool:
    return vm is not None and vm.ready


# -- the whole lifecycle -------------------------------------------------------------------------


def test_lifecycle_create_ready_hibernate_restore_delete(provider: HyperstackProvider, cloud: Cloud) -> None:
    name = unique("life")
    vm = provider.create_vm(spec(name, firewall_rules=(FirewallRule(22, 22, "10.0.0.0/8"),)))
    assert vm.name == name and vm.provider_id.isdigit()
    assert vm.phase is VmPhase.CREATING and not vm.ready

    vm = wait_for(provider, cloud, vm.provider_id, ready)
    assert vm.phase is VmPhase.RUNNING and vm.status == "ACTIVE"
    assert vm.ip and vm.flavor == "n3-H100x1" and vm.gpu_count == 1 and vm.gpu
    assert vm.environment == ENV and vm.labels == ("spot", "tier-test") and vm.created_at is not None
    assert vm.created_at.tzinfo is not None
    assert vm.node_dir is not None and vm.node_dir.is_absolute() and vm.engine_port
    assert provider.find_vm(name) == vm
    assert [v.provider_id for v in provider.list_vms(name)] == [vm.provider_id]

    provider.hibernate_vm(vm.provider_id)
    provider.hibernate_vm(vm.provider_id)  # asking twice is not an error
    hibernated = wait_for(provider, cloud, vm.provider_id, lambda v: v.phase is VmPhase.HIBERNATED)
    assert not hibernated.ready

    provider.restore_vm(vm.provider_id)
    assert provider.get_vm(vm.provider_id).phase is VmPhase.RESTORING
    provider.restore_vm(vm.provider_id)  # a VM already restoring is not restored twice
    restored = wait_for(provider, cloud, vm.provider_id, ready)
    assert restored.phase is VmPhase.RUNNING

    provider.delete_vm(vm.provider_id)
    assert wait_for(provider, cloud, vm.provider_id, lambda v: v is None) is None
    provider.delete_vm(vm.provider_id)  # already gone: not an error
    assert provider.find_vm(name) is None


def test_list_vms_filters_by_prefix_across_pages(provider: HyperstackProvider, cloud: Cloud,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("spotinference.providers.hyperstack.PAGE_SIZE", 2)
    names = [unique("page") for _ in range(5)]
    for name in names:
        provider.create_vm(spec(name, flavor="sim-cpu-1"))
    provider.create_vm(spec("x" + unique("page"), flavor="sim-cpu-1"))  # contains "t-page", not a prefix
    before = cloud.state()["requests"].get("GET /v1/core/virtual-machines", 0)
    listed = provider.list_vms("t-page-")
    assert sorted(v.name for v in listed) == sorted(names)
    assert cloud.state()["requests"]["GET /v1/core/virtual-machines"] - before >= 3  # 5 VMs, pages of 2


# -- never a duplicate VM ----------------------------------------------------------------------------


def test_create_twice_returns_the_same_vm(provider: HyperstackProvider, cloud: Cloud) -> None:
    name = unique("twice")
    first = provider.create_vm(spec(name))
    second = provider.create_vm(spec(name))
    assert second.provider_id == first.provider_id
    assert len(cloud.vms_named(name)) == 1


def test_create_after_server_error_makes_one_vm(provider: HyperstackProvider, cloud: Cloud) -> None:
    name = unique("5xx")
    posts = cloud.requests("POST /v1/core/virtual-machines")
    # Faults are taken one per request, oldest first: a no-op one for the name lookup (GET), then
    # a 502 for the POST.
    cloud.fault(kind="slow", count=1, delay_s=0, path_prefix="/v1/core/virtual-machines")
    cloud.fault(kind="server_error", count=1, status=502, path_prefix="/v1/core/virtual-machines")
    vm = provider.create_vm(spec(name))
    assert vm.name == name
    assert len(cloud.vms_named(name)) == 1
    # the 502'd POST, a second lookup that finds nothing, and one more POST
    assert cloud.requests("POST /v1/core/virtual-machines") - posts == 2


def test_create_after_timeout_makes_one_vm(cloud: Cloud, clean_faults: None) -> None:
    name = unique("slow")
    # Real time here: the emulator holds the POST for 0.8 s and then creates the VM although the
    # client gave up after 0.4 s. The client must wait and find that VM, not post a second one.
    timer = RealTime()
    with make_provider(cloud.base_url, timer, request_timeout_s=0.4, retry_base_s=1.0) as provider:
        provider.ensure_key_pair("spot-test", ENV, PUBLIC_KEY)
        posts = cloud.requests("POST /v1/core/virtual-machines")
        cloud.fault(kind="slow", count=1, delay_s=0, path_prefix="/v1/core/virtual-machines")  # the lookup
        cloud.fault(kind="slow", count=1, delay_s=0.8, path_prefix="/v1/core/virtual-machines")  # the POST
        vm = provider.create_vm(spec(name))
        assert vm.name == name
    assert timer.sleeps, "the POST should have timed out"
    assert cloud.requests("POST /v1/core/virtual-machines") - posts == 1
    assert len(cloud.vms_named(name)) == 1


# -- retries ---------------------------------------------------------------------------------------


def test_rate_limit_burst_is_retried_with_doubling_backoff(cloud: Cloud, clean_faults: None) -> None:
    timer = FakeTime()
    with make_provider(cloud.base_url, timer, retry_base_s=0.5) as provider:
        cloud.fault(kind="rate_limit", count=3)
        assert isinstance(provider.list_vms("t-nothing-"), list)
    assert len(timer.sleeps) == 3
    for n, slept in enumerate(timer.sleeps):
        assert 0.5 * 2**n <= slept <= 2 * 0.5 * 2**n


def test_persistent_rate_limit_gives_up_within_the_deadline(cloud: Cloud, clean_faults: None) -> None:
    timer = FakeTime()
    with make_provider(cloud.base_url, timer, retry_base_s=0.25, retry_deadline_s=5) as provider:
        cloud.fault(kind="rate_limit", count=10_000)
        with pytest.raises(ProviderRateLimitedError) as caught:
            provider.get_vm("1")
    assert caught.value.status_code == 429
    assert "GET /core/virtual-machines/1" in str(caught.value)
    assert sum(timer.sleeps) < 5


def test_persistent_server_error_gives_up_within_the_deadline(cloud: Cloud, clean_faults: None) -> None:
    timer = FakeTime()
    with make_provider(cloud.base_url, timer, retry_base_s=0.1, retry_deadline_s=3) as provider:
        cloud.fault(kind="server_error", count=10_000, status=503)
        with pytest.raises(ProviderUnavailableError) as caught:
            provider.list_vms()
    error = caught.value
    assert error.status_code == 503 and "GET /core/virtual-machines" in str(error) and "503" in str(error)
    assert len(timer.sleeps) >= 3 and sum(timer.sleeps) < 3
    for n, slept in enumerate(timer.sleeps):
        assert 0.1 * 2**n <= slept <= 2 * 0.1 * 2**n


def test_client_errors_are_not_retried(provider: HyperstackProvider, fake_time: FakeTime) -> None:
    with pytest.raises(ProviderNotFoundError) as caught:
        provider.hibernate_vm("987654")
    assert caught.value.status_code == 404
    with pytest.raises(ProviderError) as refused:
        provider.create_vm(spec(unique("badflavor"), flavor="no-such-flavor"))
    assert refused.value.status_code == 400 and refused.value.message
    assert fake_time.sleeps == []


# -- delete, capacity, reclaim ----------------------------------------------------------------------


def test_delete_while_creating_is_retried_until_it_succeeds(provider: HyperstackProvider, cloud: Cloud,
                                                             fake_time: FakeTime) -> None:
    vm = provider.create_vm(spec(unique("early-delete")))
    assert vm.phase is VmPhase.CREATING
    path = f"DELETE /v1/core/virtual-machines/{vm.provider_id}"
    provider.delete_vm(vm.provider_id)  # the emulator refuses while CREATING/BUILD; the client waits
    assert cloud.requests(path) >= 2, "the first delete should have been refused"
    assert fake_time.sleeps and sum(fake_time.sleeps) >= 60  # the emulated create takes 60 s
    assert wait_for(provider, cloud, vm.provider_id, lambda v: v is None) is None


def test_restore_without_capacity_raises_insufficient_capacity(provider: HyperstackProvider,
                                                               cloud: Cloud) -> None:
    vm = provider.create_vm(spec(unique("nocap")))
    wait_for(provider, cloud, vm.provider_id, ready)
    provider.hibernate_vm(vm.provider_id)
    wait_for(provider, cloud, vm.provider_id, lambda v: v.phase is VmPhase.HIBERNATED)
    cloud.fault(kind="restore_capacity", count=1, mode="reject")
    with pytest.raises(InsufficientCapacityError) as caught:
        provider.restore_vm(vm.provider_id)
    assert caught.value.exit_code == 5 and caught.value.hint and "Insufficient capacity" in str(caught.value)
    assert SECRET not in f"{caught.value!s} {caught.value!r} {caught.value.hint}"
    assert provider.get_vm(vm.provider_id).phase is VmPhase.HIBERNATED


def test_reclaimed_vm_in_error_maps_to_error(provider: HyperstackProvider, cloud: Cloud) -> None:
    vm = provider.create_vm(spec(unique("reclaim-err")))
    wait_for(provider, cloud, vm.provider_id, ready)
    cloud.admin.post("/_sim/reclaim", json={"vm_id": int(vm.provider_id), "mode": "error"}).raise_for_status()
    after = provider.get_vm(vm.provider_id)
    assert after.phase is VmPhase.ERROR and not after.ready


def test_reclaimed_vm_that_vanishes_is_gone(provider: HyperstackProvider, cloud: Cloud) -> None:
    vm = provider.create_vm(spec(unique("reclaim-gone")))
    wait_for(provider, cloud, vm.provider_id, ready)
    cloud.admin.post("/_sim/reclaim", json={"vm_id": int(vm.provider_id), "mode": "vanish"}).raise_for_status()
    assert provider.get_vm(vm.provider_id) is None
    assert provider.find_vm(vm.name) is None


# -- firewall, keys, volumes, flavors ---------------------------------------------------------------


def test_firewall_rule_is_added_once(provider: HyperstackProvider) -> None:
    vm = provider.create_vm(spec(unique("fw")))
    rule = FirewallRule(8001, 8001, "203.0.113.7/32")
    provider.add_firewall_rule(vm.provider_id, rule)
    provider.add_firewall_rule(vm.provider_id, rule)
    rules = provider.get_vm(vm.provider_id).raw.get("security_rules", [])
    same = [r for r in rules if r.get("port_range_min") == 8001 and r.get("remote_ip_prefix") == "203.0.113.7/32"]
    assert len(same) == 1 and same[0]["direction"] == "ingress" and same[0]["protocol"] == "tcp"


def test_key_pair_and_volume_are_created_once(provider: HyperstackProvider, cloud: Cloud) -> None:
    provider.ensure_key_pair("spot-test", ENV, PUBLIC_KEY)  # already made by the fixture
    assert len([k for k in cloud.state().get("keypairs", []) if k.get("name") == "spot-test"]) == 1
    with pytest.raises(ProviderError, match="different public key"):
        provider.ensure_key_pair("spot-test", ENV, PUBLIC_KEY.replace("AAAAC3", "BBBBC3"))
    name = unique("weights")
    volume_id = provider.ensure_volume(name, ENV, 50)
    assert volume_id.isdigit() and provider.ensure_volume(name, ENV, 50) == volume_id
    assert len([v for v in cloud.state().get("volumes", []) if v.get("name") == name]) == 1


def test_extra_volumes_are_attached(provider: HyperstackProvider) -> None:
    first, second = unique("vol-a"), unique("vol-b")
    provider.ensure_volume(first, ENV, 10)
    provider.ensure_volume(second, ENV, 10)
    vm = provider.create_vm(spec(unique("vols"), volume_names=(first, second)))
    attached = {a["volume"]["name"] for a in vm.raw.get("volume_attachments", [])}
    assert {first, second} <= attached


def test_get_flavor_and_can_hibernate(provider: HyperstackProvider) -> None:
    h100 = provider.get_flavor("n3-H100x2")
    assert h100 is not None and h100.gpu_count == 2 and h100.gpu and h100.can_hibernate
    l40 = provider.get_flavor("n3-L40x1", region="CANADA-1")
    assert l40 is not None and not l40.can_hibernate and l40.region == "CANADA-1"
    assert provider.get_flavor("n9-nothing") is None


# -- money -----------------------------------------------------------------------------------------


def test_billing_usage_matches_the_emulators_bill(provider: HyperstackProvider, cloud: Cloud) -> None:
    kept = provider.create_vm(spec(unique("bill-kept")))
    gone = provider.create_vm(spec(unique("bill-gone"), flavor="sim-cpu-1"))
    wait_for(provider, cloud, kept.provider_id, ready)
    wait_for(provider, cloud, gone.provider_id, ready)
    cloud.advance(600)
    provider.delete_vm(gone.provider_id)
    wait_for(provider, cloud, gone.provider_id, lambda v: v is None)
    cloud.advance(120)

    items = {(i.resource_type, i.resource_id): i for i in provider.billing_usage()}
    raw_active = cloud.raw("/billing/billing/usage")["data"]
    raw_deleted = cloud.raw("/billing/billing/usage", deleted="true")["data"]
    expected = {(str(r["resource_type"]), str(r["resource_id"])): r for r in raw_deleted}
    expected.update({(str(r["resource_type"]), str(r["resource_id"])): r for r in raw_active})
    assert set(items) == set(expected)
    for key, raw in expected.items():
        item = items[key]
        assert item.total_bill_usd == raw["total_bill"]
        per_minute = raw.get("bill_per_minute")
        assert item.usd_per_hour == (None if per_minute is None else per_minute * 60)
        assert item.active is raw["active"]

    running = items[("vm", kept.provider_id)]
    # bill_per_minute is 1.90 / 60 rounded to 10 places; × 60 is the rate, as the API states it
    assert running.active and abs(running.usd_per_hour - Decimal("1.90")) < Decimal("1e-6")
    assert running.total_bill_usd > 0
    deleted = items[("vm", gone.provider_id)]
    assert not deleted.active and deleted.usd_per_hour is None and deleted.total_bill_usd > 0


# -- the envelope and the key ------------------------------------------------------------------------


def test_a_200_with_status_false_is_an_error() -> None:
    # The emulator never answers 200 with status false, but Hyperstack is documented to; a
    # MockTransport is used for this one envelope case only (everything else runs on the emulator).
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["api_key"] == SECRET
        return httpx.Response(200, json={"status": False, "message": "Flavor is disabled",
                                         "error_reason": "bad_request"})

    settings = Settings(providers={"hs": {"api_key": SECRET}})
    with open_provider(settings, "hs", transport=httpx.MockTransport(handler)) as provider:
        with pytest.raises(ProviderError) as caught:
            provider.list_vms()
    assert "Flavor is disabled" in str(caught.value) and caught.value.reason == "bad_request"
    assert type(caught.value) is ProviderError and caught.value.status_code == 200
    assert SECRET not in f"{caught.value!s} {caught.value!r}"


class _BadGateway(http.server.BaseHTTPRequestHandler):
    """A real server whose every answer is an HTML 502, as a proxy in front of an API gives."""

    def do_GET(self) -> None:  # noqa: N802
        body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        self.send_response(502)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def bad_gateway() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BadGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_the_key_never_leaks(cloud: Cloud, bad_gateway: str, clean_faults: None,
                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []

    def provoke(call, provider: HyperstackProvider) -> None:
        with pytest.raises(ProviderError) as caught:
            call(provider)
        errors.append(caught.value)

    timer = FakeTime()
    with make_provider(cloud.base_url, timer, retry_base_s=0.1, retry_deadline_s=1) as provider:
        wrong = make_provider(cloud.base_url, timer, api_key=SECRET + "-wrong")
        provoke(lambda p: p.list_vms(), wrong)  # 401
        provoke(lambda p: p.hibernate_vm("424242"), provider)  # 404
        provoke(lambda p: p.create_vm(spec(unique("leak"), flavor="nope")), provider)  # 400
        cloud.fault(kind="rate_limit", count=10_000)
        provoke(lambda p: p.list_vms(), provider)  # 429 past the deadline
        cloud.clear_faults()
        cloud.fault(kind="server_error", count=10_000, status=500)
        provoke(lambda p: p.billing_usage(), provider)  # 5xx past the deadline
        cloud.clear_faults()
        texts = [repr(provider), repr(provider.api), repr(wrong), repr(wrong.api)]
        wrong.close()
    with make_provider(cloud.base_url, FakeTime(), request_timeout_s=0.2, retry_deadline_s=0.5) as slow:
        cloud.fault(kind="slow", count=10_000, delay_s=1)
        provoke(lambda p: p.list_vms(), slow)  # timeouts
        cloud.clear_faults()
    with make_provider(f"http://127.0.0.1:{free_port()}/v1", FakeTime(), retry_deadline_s=0.5) as refused:
        provoke(lambda p: p.get_vm("1"), refused)  # connection refused
    with make_provider(bad_gateway, FakeTime(), retry_deadline_s=0.5) as html:
        provoke(lambda p: p.get_vm("1"), html)  # a non-JSON 502

    kinds = {type(e) for e in errors}
    assert {ProviderAuthError, ProviderNotFoundError, ProviderError, ProviderRateLimitedError,
            ProviderUnavailableError} <= kinds
    assert isinstance(errors[0], ProviderAuthError) and "SPOT_PROVIDERS__SIM__API_KEY" in (errors[0].hint or "")
    for error in errors:
        texts += [str(error), repr(error), error.hint or "", repr(error.__cause__), repr(error.__context__)]
    texts += [record.getMessage() for record in caplog.records]
    texts.append(caplog.text)
    assert not [t for t in texts if SECRET in t]
    assert "502" in str(errors[-1]) and "Bad Gateway" in str(errors[-1])


# -- settings and the registry ------------------------------------------------------------------------


def test_open_provider_explains_missing_configuration(cloud: Cloud) -> None:
    with pytest.raises(ConfigError) as missing:
        open_provider(Settings(), "hyperstack")
    assert "not configured" in str(missing.value)
    with pytest.raises(ConfigError) as no_key:
        open_provider(Settings(providers={"prod": {}}), "prod")
    assert "SPOT_PROVIDERS__PROD__API_KEY" in no_key.value.hint and "api_key_file" in no_key.value.hint
    with pytest.raises(ConfigError):
        HyperstackProvider("prod", Settings(providers={"prod": {}}).providers["prod"])


def test_emulator_without_a_key_sends_a_placeholder(tmp_path: Path) -> None:
    server, root = start_sim_cloud(tmp_path)
    try:
        settings = Settings(providers={"sim": {"base_url": f"{root}/v1", "emulator": True}})
        with open_provider(settings, "sim") as provider:
            assert provider.list_vms() == []
            assert provider.get_flavor("sim-cpu-1") is not None
        # A base_url without /v1 answers 404 everywhere: that must not read as "the VM is gone".
        wrong = Settings(providers={"sim": {"base_url": root, "emulator": True}})
        with open_provider(wrong, "sim") as provider:
            with pytest.raises(ProviderError, match="base_url") as caught:
                provider.get_vm("1")
            assert type(caught.value) is ProviderError
            with pytest.raises(ProviderError, match="base_url"):
                provider.delete_vm("1")
    finally:
        server.stop()


# -- the mapping on its own ---------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "phase"), [
    ({"status": "CREATING"}, VmPhase.CREATING),
    ({"status": "BUILD"}, VmPhase.CREATING),
    ({"status": "STARTING"}, VmPhase.CREATING),
    ({"status": "ACTIVE", "vm_state": "active"}, VmPhase.RUNNING),
    ({"status": "HIBERNATING"}, VmPhase.HIBERNATING),
    ({"status": "HIBERNATED"}, VmPhase.HIBERNATED),
    ({"status": "RESTORING"}, VmPhase.RESTORING),
    ({"status": "STOPPING"}, VmPhase.STOPPED),
    ({"status": "SHUTOFF"}, VmPhase.STOPPED),
    ({"status": "DELETING"}, VmPhase.DELETING),
    ({"status": "ERROR"}, VmPhase.ERROR),
    ({"status": "ACTIVE", "vm_state": "active", "power_state": "Error"}, VmPhase.ERROR),
    ({"status": "ACTIVE", "vm_state": "ERROR"}, VmPhase.ERROR),
    ({"status": "REBOOTING", "vm_state": "active"}, VmPhase.RUNNING),
    ({"status": "SHELVING_SOMETHING", "vm_state": "shelved_offloaded"}, VmPhase.HIBERNATED),
    ({"status": "WHATEVER"}, VmPhase.CREATING),
    ({}, VmPhase.CREATING),
])
def test_status_words_map_onto_phases(fields: dict[str, Any], phase: VmPhase) -> None:
    assert phase_of(fields) is phase
    vm = vm_from({"id": 7, "name": "x", **fields})
    assert vm.phase is phase and vm.provider_id == "7"
    if fields.get("status") != "ACTIVE":
        assert not vm.ready


def test_ready_needs_active_and_the_asked_for_ip() -> None:
    base = {"id": 1, "name": "n", "status": "ACTIVE", "vm_state": "active", "power_state": "RUNNING"}
    assert not vm_from({**base, "requires_public_ip": True, "floating_ip_status": "ATTACHING"}).ready
    assert vm_from({**base, "requires_public_ip": True, "floating_ip_status": "ATTACHED",
                    "floating_ip": "198.51.100.4"}).ready
    assert vm_from({**base, "requires_public_ip": False, "fixed_ip": "10.0.0.4"}).ready
    assert not vm_from({**base, "vm_state": "building"}).ready
    odd = vm_from({"id": 2, "flavor": None, "labels": [{"label": "a"}, "b", 3], "created_at": "garbage",
                   "emulator": {"node_dir": "/tmp/n", "engine_port": "8001", "ssh_port": None}})
    assert odd.labels == ("a", "b") and odd.created_at is None and odd.engine_port == 8001 and odd.ssh_port is None


@pytest.mark.parametrize("text", ["2025-03-04T05:06:07", "2025-03-04T05:06:07Z", "2025-03-04 05:06:07",
                                  "2025-03-04T05:06:07.123456+00:00", "2025-03-04T06:06:07+01:00"])
def test_times_parse_as_utc(text: str) -> None:
    parsed = parse_time(text)
    assert parsed is not None and parsed.utcoffset().total_seconds() == 0
    assert parsed.replace(microsecond=0).isoformat() == "2025-03-04T05:06:07+00:00"
