"""Volumes keep billing after their VMs are gone (issue 22, finding 5): `spot volumes` shows them,
`spot status` ends with what still bills while everything sleeps, and `spot down TIER --terminate
--volumes` deletes them, after which the provider's bill for them stops growing. Against `spot sim
cloud` as a real server, through the real Hyperstack client."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest

from tests.conftest import run_spot
from tests.test_fleet import FAST, Cloud, write_config
from tests.servers import start_sim_cloud


@pytest.fixture
def cloud(tmp_path):  # noqa: ANN001, ANN201
    server, root = start_sim_cloud(tmp_path / "cloud", *FAST)
    write_config(f"{root}/v1")
    yield Cloud(f"{root}/v1", server)
    run_spot("down", "demo", "--terminate", "--volumes", "--yes")
    server.stop()


def ok(*args: str) -> str:
    result = run_spot(*args)
    assert result.returncode == 0, f"spot {' '.join(args)} failed ({result.returncode}): {result.stderr}"
    return result.stdout


def volumes_json() -> list[dict]:
    return json.loads(ok("volumes", "--json"))


def usage(cloud: Cloud, *, deleted: bool) -> dict[str, dict]:
    """The emulator's own billing usage, by resource name (what the provider will invoice)."""
    answer = httpx.get(f"{cloud.base_url}/billing/billing/usage", params={"deleted": "true"} if deleted else None,
                       headers={"api_key": "test"}, timeout=10).json()
    return {item["name"]: item for item in answer["data"] if item["resource_type"] == "volume"}


def advance(cloud: Cloud, seconds: float) -> None:
    httpx.post(f"{cloud.root}/_sim/advance", json={"seconds": seconds}, timeout=10).raise_for_status()


def test_a_weights_volume_bills_after_terminate_until_down_deletes_it_with_volumes(cloud: Cloud) -> None:
    ok("up", "demo")
    [volume] = volumes_json()
    assert volume["tier"] == "demo" and volume["name"] == "demo-weights" and volume["size_gb"] == 10
    assert volume["attached_to"] == "spot-demo-1"
    assert Decimal(str(volume["usd_per_hour"])) > 0  # the provider's billing rate for it
    assert volume["billing_since"]

    ok("down", "demo", "--terminate", "--yes")
    [volume] = volumes_json()  # the VM is gone, the volume is not
    assert volume["name"] == "demo-weights" and volume["attached_to"] is None
    rate = Decimal(str(volume["usd_per_hour"]))
    assert rate > 0
    before = Decimal(str(usage(cloud, deleted=False)["demo-weights"]["total_bill"]))
    advance(cloud, 600)
    assert Decimal(str(usage(cloud, deleted=False)["demo-weights"]["total_bill"])) > before  # still billing

    table = ok("volumes")
    assert "demo-weights" in table and "nothing" in table  # attached to nothing
    status = ok("status").strip().splitlines()
    assert status[0].startswith("no nodes")
    assert status[-1] == f"billing while asleep: ${rate:.5f}/h (1 volume, 10 GB)", status[-1]

    ok("down", "demo", "--terminate", "--volumes", "--yes")
    assert volumes_json() == []
    gone = usage(cloud, deleted=True)["demo-weights"]
    assert gone["active"] is False and gone["bill_per_minute"] is None
    assert "demo-weights" not in usage(cloud, deleted=False)
    final = Decimal(str(gone["total_bill"]))
    advance(cloud, 600)
    assert Decimal(str(usage(cloud, deleted=True)["demo-weights"]["total_bill"])) == final  # billing stopped
    assert ok("status").strip().splitlines()[-1] == "billing while asleep: nothing (no volumes, no hibernated VMs)"


def test_down_volumes_in_one_step_waits_for_the_vm_to_free_its_volume(cloud: Cloud) -> None:
    ok("up", "demo")
    result = run_spot("down", "demo", "--terminate", "--volumes", "--yes")
    assert result.returncode == 0, result.stderr
    assert "volume demo-weights (10 GB): deleted" in result.stderr
    assert volumes_json() == [] and cloud.vms() == []


def test_status_counts_hibernated_vms_and_volumes_in_what_bills_while_asleep(cloud: Cloud) -> None:
    ok("up", "demo")
    ok("hibernate", "demo")
    [node] = json.loads(ok("status", "--json"))
    [volume] = volumes_json()
    total = Decimal(str(node["usd_per_hour"])) + Decimal(str(volume["usd_per_hour"]))
    last = ok("status").strip().splitlines()[-1]
    assert last == (f"billing while asleep: ${total:.3f}/h = 1 volume ${Decimal(str(volume['usd_per_hour'])):.5f}/h"
                    f" + 1 hibernated VM ${Decimal(str(node['usd_per_hour'])):.3f}/h"), last


@pytest.mark.parametrize(("args", "needs"), [
    (("down", "demo", "--terminate", "--volumes"), "--yes"),
    (("down", "demo", "--volumes", "--yes"), "--terminate"),
])
def test_deleting_volumes_needs_terminate_and_yes_when_not_at_a_terminal(cloud: Cloud, args, needs) -> None:  # noqa: ANN001
    ok("up", "demo")
    result = run_spot(*args)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and needs in line and "Traceback" not in result.stderr
    [volume] = volumes_json()  # nothing was deleted
    assert volume["attached_to"] == "spot-demo-1"


def test_the_hyperstack_client_lists_and_deletes_volumes_as_the_api_answers(cloud: Cloud) -> None:
    """Delete is refused while attached (the real API's 400), and a volume already gone is not an error."""
    from spotinference.config.models import ProviderSettings
    from spotinference.providers.errors import ProviderError
    from spotinference.providers.hyperstack import HyperstackProvider

    ok("up", "demo")
    provider = HyperstackProvider("sim", ProviderSettings(base_url=cloud.base_url, emulator=True))
    with provider:
        [volume] = provider.list_volumes()
        [vm] = provider.list_vms("spot-")
        assert volume.name == "demo-weights" and volume.size_gb == 10 and volume.attached_vm_ids == (vm.provider_id,)
        with pytest.raises(ProviderError) as refused:
            provider.delete_volume(volume.provider_id)
        assert refused.value.status_code == 400 and "attached" in refused.value.message
        ok("down", "demo", "--terminate", "--yes")
        [volume] = provider.list_volumes()
        assert volume.attached_vm_ids == () and volume.status == "available"
        provider.delete_volume(volume.provider_id)
        provider.delete_volume(volume.provider_id)  # already gone: fine
        assert provider.list_volumes() == []


def test_a_volume_attached_to_a_vm_outside_the_deletion_is_refused_and_kept(cloud: Cloud) -> None:
    """Someone attached the tier's weights volume to a VM of their own: deleting it would break
    that VM, so `--volumes` refuses with one line naming it (exit 7) and deletes nothing."""
    ok("up", "demo")
    ok("down", "demo", "--terminate", "--yes")
    created = httpx.post(f"{cloud.base_url}/core/virtual-machines", headers={"api_key": "test"}, timeout=10, json={
        "name": "someone-elses-vm", "environment_name": "sim-local", "flavor_name": "sim-cpu-1",
        "key_name": "spotinference-sim-local", "count": 1, "volume_name": "demo-weights"})
    assert created.status_code == 200, created.text
    result = run_spot("down", "demo", "--terminate", "--volumes", "--yes")
    assert result.returncode == 7, result.stderr
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: volume demo-weights is attached to VM someone-elses-vm"), result.stderr
    [volume] = volumes_json()
    assert volume["attached_to"] == "someone-elses-vm"
    vm_id = created.json()["instances"][0]["id"]
    httpx.delete(f"{cloud.base_url}/core/virtual-machines/{vm_id}", headers={"api_key": "test"}, timeout=10)


def test_a_volume_in_the_openapi_files_shape_reads_whole() -> None:
    """`Volumes_Fields` as Hyperstack's OpenAPI file gives it (ids are numbers, times with a space),
    plus an attachment already detaching, which no longer ties the volume to its VM."""
    from datetime import UTC, datetime

    from spotinference.providers.hyperstack_mapping import volume_from

    volume = volume_from({
        "attachments": [{"instance_id": 5, "protected": True, "id": 5, "device": "/dev/vdb", "status": "ATTACHED"},
                        {"instance_id": 6, "protected": False, "id": 6, "device": "/dev/vdc", "status": "DETACHING"}],
        "volume_type": "Cloud-SSD", "created_at": "2000-01-23 04:56:07+00:00", "description": "", "bootable": False,
        "callback_url": None, "environment": {"features": "{}", "name": "CANADA-1", "region": "CANADA-1"},
        "size": 200, "updated_at": "2000-01-23 04:56:07+00:00", "name": "llama-weights", "id": 2, "image_id": None,
        "status": "in-use"})
    assert (volume.provider_id, volume.name, volume.size_gb, volume.status) == ("2", "llama-weights", 200, "in-use")
    assert volume.attached_vm_ids == ("5",) and volume.environment == "CANADA-1"
    assert volume.created_at == datetime(2000, 1, 23, 4, 56, 7, tzinfo=UTC)


def test_a_volume_delete_rides_out_server_errors_and_is_made_once(cloud: Cloud) -> None:
    ok("up", "demo")
    ok("down", "demo", "--terminate", "--yes")
    cloud.fault(kind="server_error", count=2, status=503, path_prefix="/v1/core/volumes/")
    result = run_spot("down", "demo", "--terminate", "--volumes", "--yes")
    assert result.returncode == 0, result.stderr
    assert volumes_json() == []
    deletes = {k: v for k, v in cloud.state()["requests"].items() if k.startswith("DELETE /v1/core/volumes/")}
    assert sum(deletes.values()) == 3, deletes  # two 503s, then the delete that took


def test_volumes_outside_the_fleet_are_listed_and_never_deleted_by_down(cloud: Cloud) -> None:
    ok("up", "demo")
    made = httpx.post(f"{cloud.base_url}/core/volumes", headers={"api_key": "test"}, timeout=10, json={
        "name": "scratch", "environment_name": "sim-local", "size": 5, "volume_type": "Cloud-SSD"})
    assert made.status_code == 200, made.text
    listed = {v["name"]: v for v in volumes_json()}
    assert set(listed) == {"demo-weights", "scratch"}
    assert listed["scratch"]["tier"] is None and listed["scratch"]["attached_to"] is None
    assert Decimal(str(listed["scratch"]["usd_per_hour"])) > 0
    wide = run_spot("volumes", env={"COLUMNS": "200"})
    assert wide.returncode == 0 and "(not spot's)" in wide.stdout

    ok("down", "demo", "--terminate", "--volumes", "--yes")
    [left] = volumes_json()
    assert left["name"] == "scratch"
