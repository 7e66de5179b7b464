"""Real nodes: Debian bookworm booted with systemd in a container, reached over real SSH.

One image for the whole session (built once per machine with debootstrap, ~1.5 min cold, then
cached), one node for the module's node tests (booted twice), one each for the failed-block and
the cannot-boot tests, one VM through the emulator (whose emulator is restarted once): about
15 s in all with the image cached. Boots take about a second here.
On a machine where a node cannot boot (no root, no apt to install the programs, containers
refused), every test here FAILS with one line saying why: it never skips.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import paramiko
import pytest

from spotinference.sim.cloud import catalog
from spotinference.sim.cloud.billing import per_minute_usd, usd_of
from spotinference.sim.realnode import RealNode, RealNodeError, RealNodeSpec
from spotinference.sim.realnode.network import SLOTS_DIR
from tests.sshd import keygen
from tests.conftest import run_spot
from tests.servers import start_sim_cloud
from tests.test_sim_cloud import KEY, Sim

pytestmark = pytest.mark.slow

USER = "ubuntu"
SSH_WAIT_S = 120.0  # generous: a boot takes about a second here, but the machine is shared


# -- the machine, the image, a key -------------------------------------------------------------

@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return keygen(tmp_path_factory.mktemp("real-node-key") / "id_ed25519")


def boot_or_fail(node: RealNode) -> None:
    started = time.monotonic()
    try:
        node.boot()
    except RealNodeError as exc:
        pytest.fail(f"a real node cannot boot on this machine: {exc}", pytrace=False)
    print(f"\nreal node booted in {time.monotonic() - started:.2f} s")


@pytest.fixture(scope="module")
def node(real_node_image: Path, key: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNode]:
    spec = RealNodeSpec(public_key=Path(f"{key}.pub").read_text(), user=USER, hostname="node-a")
    with RealNode.create(tmp_path_factory.mktemp("real-node") / "a", spec, image_root=real_node_image) as made:
        boot_or_fail(made)
        yield made


# -- over SSH, as spot reaches a node ---------------------------------------------------------

def connect(address: str, key: Path, *, wait_s: float = SSH_WAIT_S) -> paramiko.SSHClient:
    """An SSH session as the sudo user with the key, retried until the node's sshd takes it."""
    deadline = time.monotonic() + wait_s
    while True:
        if not sshd_answers(address):  # not up yet (paramiko would log each refused banner)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no sshd answered at {address}:22 within {wait_s:g} s")
            time.sleep(0.5)
            continue
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(address, port=22, username=USER, key_filename=str(key), look_for_keys=False,
                           allow_agent=False, timeout=5, banner_timeout=5, auth_timeout=5)
            return client
        except (OSError, paramiko.SSHException):
            client.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def sh(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    """Exit status and output (stdout then stderr) of ``command`` on the node."""
    _, out, err = client.exec_command(command, timeout=60)
    status = out.channel.recv_exit_status()
    return status, (out.read() + err.read()).decode().strip()


def ok(client: paramiko.SSHClient, command: str) -> str:
    status, output = sh(client, command)
    assert status == 0, f"{command!r} exited {status}: {output}"
    return output


def sshd_answers(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=1.0) as sock:
            sock.settimeout(2.0)
            return sock.recv(4) == b"SSH-"
    except OSError:
        return False


# -- what a node holds on the host -------------------------------------------------------------

def loop_devices_of(path: Path) -> list[str]:
    listing = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    return [line.split(":", 1)[0] for line in listing.splitlines() if str(path) in line]


def host_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as table:
        return [line.split()[1] for line in table if line.split()[1].startswith(str(path))]


def netns_names() -> set[str]:
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


def slot_holders() -> set[str]:
    return {p.read_text() for p in SLOTS_DIR.iterdir() if p.name.isdigit()} if SLOTS_DIR.is_dir() else set()


def assert_nothing_left(path: Path, slot_number: int) -> None:
    assert loop_devices_of(path) == []
    assert f"spnh{slot_number}" not in host_links()
    assert f"spotnode{slot_number}" not in netns_names()
    assert mounts_under(path) == []
    assert not path.exists()
    assert str(path) not in slot_holders()


# -- a node ------------------------------------------------------------------------------------

def test_a_node_boots_systemd_and_takes_the_sudo_user_over_ssh(node: RealNode, key: Path) -> None:
    client = connect(node.address, key)
    try:
        status, state = sh(client, "systemctl is-system-running --wait")
        assert state in ("running", "degraded"), state
        assert ok(client, "cat /proc/1/comm") == "systemd"
        assert ok(client, "id -un") == USER
        assert ok(client, "sudo -n true && echo sudo-ok") == "sudo-ok"
        assert ok(client, "systemctl is-active ssh") == "active"
        assert ok(client, "hostname") == "node-a"
        # the weights volume: a block device, unformatted, as a fresh cloud volume is
        assert ok(client, "test -b /dev/vdb && echo block") == "block"
        status, found = sh(client, "sudo -n blkid -p /dev/vdb")
        assert status == 2 and found == "", f"blkid found a filesystem on a fresh volume: {found!r}"
    finally:
        client.close()


def test_poweroff_is_clean_and_a_boot_keeps_the_root_and_the_volume(node: RealNode, key: Path) -> None:
    client = connect(node.address, key)
    try:
        ok(client, "echo kept-on-root > ~/root-file")
        ok(client, "sudo -n mkfs.ext4 -q -L weights /dev/vdb && sudo -n mkdir -p /mnt/w "
                   "&& sudo -n mount /dev/vdb /mnt/w && echo kept-on-volume | sudo -n tee /mnt/w/f "
                   "&& sudo -n umount /mnt/w")
    finally:
        client.close()

    node.poweroff()
    assert not node.is_running()
    assert not sshd_answers(node.address)
    # powered off, it holds no devices: the loop device, the veth and the overlay are released
    assert loop_devices_of(node.path) == []
    assert f"spnh{node.slot.number}" not in host_links()
    assert mounts_under(node.path) == []
    journal = (node.path / "console.log").read_text(errors="replace")
    assert "Halting system." in journal or "Powering off." in journal, journal[-2000:]  # systemd's last words

    boot_or_fail(node)
    client = connect(node.address, key)
    try:
        assert ok(client, "cat ~/root-file") == "kept-on-root"
        assert ok(client, "sudo -n blkid -s LABEL -o value /dev/vdb") == "weights"
        assert ok(client, "sudo -n mount /dev/vdb /mnt/w && cat /mnt/w/f && sudo -n umount /mnt/w") == "kept-on-volume"
    finally:
        client.close()


def test_a_node_deleted_when_its_block_fails_leaves_nothing(real_node_image: Path, key: Path, tmp_path: Path,
                                                           node: RealNode) -> None:
    path = tmp_path / "doomed"
    # the same hostname as the module's node, which runs meanwhile: two nodes may share one
    spec = RealNodeSpec(public_key=Path(f"{key}.pub").read_text(), user=USER, hostname=node.spec.hostname)
    with pytest.raises(RuntimeError, match="the test failed here"):
        with RealNode.create(path, spec, image_root=real_node_image) as doomed:
            boot_or_fail(doomed)
            slot = doomed.slot.number
            assert node.is_running() and doomed.address != node.address
            client = connect(doomed.address, key)
            try:
                assert ok(client, "hostname") == node.spec.hostname
            finally:
                client.close()
            assert loop_devices_of(path) and f"spnh{slot}" in host_links() and mounts_under(path)
            raise RuntimeError("the test failed here")
    assert_nothing_left(path, slot)


def test_a_node_that_cannot_boot_says_why_in_one_line_and_holds_nothing(real_node_image: Path, key: Path,
                                                                        tmp_path: Path) -> None:
    path = tmp_path / "broken"
    spec = RealNodeSpec(public_key=Path(f"{key}.pub").read_text(), user=USER, hostname="broken")
    with RealNode.create(path, spec, image_root=real_node_image) as broken:
        init = path / "upper" / "usr" / "lib" / "systemd" / "systemd"  # over the image's systemd
        init.parent.mkdir(parents=True)
        init.write_text("#!/bin/sh\necho 'this init cannot boot'\nexit 1\n")
        init.chmod(0o755)
        with pytest.raises(RealNodeError) as caught:
            broken.boot(timeout_s=SSH_WAIT_S)
        message = str(caught.value)
        assert "stopped while booting: this init cannot boot" in message and "\n" not in message, message
        slot = broken.slot.number
        assert not broken.is_running()
        assert loop_devices_of(path) == [] and f"spnh{slot}" not in host_links() and mounts_under(path) == []
    assert_nothing_left(path, slot)


# -- `spot sim cloud --real-nodes` -------------------------------------------------------------

def test_sim_cloud_real_nodes_says_in_one_line_which_packages_are_missing(tmp_path: Path) -> None:
    no_programs = tmp_path / "bin"
    no_programs.mkdir()
    result = run_spot("sim", "cloud", "--real-nodes", "--port", "0", "--state-dir", str(tmp_path / "state"),
                      env={"PATH": str(no_programs)})
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "debootstrap" in line and "systemd-container" in line and "apt-get install" in line, line
    assert not (tmp_path / "state" / "state.json").exists()  # nothing served, nothing made


def usage_of(sim: Sim, vm_id: int) -> dict[str, Any]:
    return sim.usage()[("vm", vm_id)]


def status_is(sim: Sim, vm_id: int, status: str) -> dict[str, Any]:
    vm = sim.vm(vm_id)
    assert vm["status"] == status, vm
    return vm


def test_sim_cloud_real_nodes_create_hibernate_restore_delete(real_node_image: Path, key: Path,
                                                              tmp_path: Path) -> None:
    flags = ("--real-nodes", "--time-scale", "0.001", "--create-seconds", "30", "--hibernate-seconds", "30",
             "--restore-seconds", "30", "--delete-seconds", "30", "--api-key", KEY)
    server, url = start_sim_cloud(tmp_path, *flags)
    sim = Sim(server, url)
    node_dirs: list[Path] = []
    try:
        sim.ok("POST", "/core/keypairs", {"name": "k1", "environment_name": "sim-local",
                                          "public_key": Path(f"{key}.pub").read_text()})
        [created] = sim.create("gpu node", flavor="n3-H100x1")
        vm_id = created["id"]
        node_dir = tmp_path / "sim-cloud" / "nodes" / str(vm_id)
        node_dirs.append(node_dir)
        sim.advance(31)
        vm = status_is(sim, vm_id, "ACTIVE")
        address = vm["floating_ip"]
        assert address == vm["fixed_ip"] and address.startswith("10.250.")
        assert vm["floating_ip_status"] == "ATTACHED"
        assert vm["emulator"]["real_node"] is True and vm["emulator"]["node_dir"] is None

        client = connect(address, key)
        try:
            assert ok(client, "sudo -n true && hostname") == "gpu-node"
            ok(client, "echo before-hibernate > ~/kept")
        finally:
            client.close()
        rate = catalog.FLAVORS["n3-H100x1"].usd_per_hour
        assert Decimal(str(usage_of(sim, vm_id)["bill_per_minute"])) == per_minute_usd(rate)

        # the node outlives its emulator, as a VM outlives an API outage; the next one powers it off
        sim.close()
        server, url = start_sim_cloud(tmp_path, *flags, port=int(url.rsplit(":", 1)[1]))
        sim = Sim(server, url)
        assert RealNode.open(node_dir).is_running() and sshd_answers(address)
        status_is(sim, vm_id, "ACTIVE")

        sim.ok("GET", f"/core/virtual-machines/{vm_id}/hibernate")
        sim.advance(31)
        status_is(sim, vm_id, "HIBERNATED")
        node = RealNode.open(node_dir)
        deadline = time.monotonic() + 90  # the poweroff runs beside the API (about a second here)
        while (node.is_running() or loop_devices_of(node_dir)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not node.is_running() and not sshd_answers(address)
        assert loop_devices_of(node_dir) == []
        before = Decimal(str(usage_of(sim, vm_id)["total_bill"]))
        assert Decimal(str(usage_of(sim, vm_id)["bill_per_minute"])) == per_minute_usd(catalog.HIBERNATED_USD_PER_HOUR)
        sim.advance(600)  # ten minutes hibernated
        after = Decimal(str(usage_of(sim, vm_id)["total_bill"]))
        assert after - before == usd_of(10 * catalog.HIBERNATED_USD_PER_HOUR)

        sim.ok("GET", f"/core/virtual-machines/{vm_id}/hibernate-restore")
        sim.advance(31)
        vm = status_is(sim, vm_id, "ACTIVE")
        assert vm["floating_ip"] == address  # the same node, at the same address
        client = connect(address, key)
        try:
            assert ok(client, "cat ~/kept") == "before-hibernate"
        finally:
            client.close()

        slot = RealNode.open(node_dir).slot.number
        sim.ok("DELETE", f"/core/virtual-machines/{vm_id}")
        sim.advance(31)
        assert sim.call("GET", f"/core/virtual-machines/{vm_id}").status_code == 404
        deadline = time.monotonic() + 90
        while node_dir.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert_nothing_left(node_dir, slot)
    finally:
        sim.close()
        for leftover in node_dirs:  # a failed test must not leave a running node behind
            if (leftover / "node.json").exists():
                RealNode.open(leftover).delete()
