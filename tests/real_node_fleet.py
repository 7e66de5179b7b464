"""One real node for the session, shared by the real-node e2e scenario and the drills.

`spot sim cloud --real-nodes` with a vLLM tier, the first `spot up` on it (a fresh node: the
volume unformatted, vLLM not installed, the tiny model copied onto the volume once it is mounted,
as an operator uploads weights), and a gateway (`spot serve`) routing to it. Booting a node and
installing vLLM takes 1.5-3 min on 2 cores, so tests that do not need a fresh node share this one:
test_real_node_e2e.py checks what that first `spot up` did and runs the lifecycle on it,
test_real_node_drills.py breaks it in turn (each drill leaves it serving), and the e2e's last
test (``@pytest.mark.last("real_node_served")``: conftest runs it right after the last other test using the
node) refuses a changed host key and terminates it. Registered in conftest.py (pytest_plugins), so
the session makes it once whichever modules run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest

from spotinference.sim.realnode import RealNode, RealNodeError
from spotinference.sim.realnode.image import ensure_image
from spotinference.sim.realnode.wheelhouse import ensure_wheelhouse
from tests.conftest import SPOT
from tests.engines.real_vllm import REQUIREMENTS, UNWANTED, build_tiny_model, ensure_vllm_installed
from tests.fleet_config import sim_tier, write_fleet_config
from tests.servers import ServerProcess, clean_env, free_port, start_sim_cloud
from tests.sshd import keygen
from tests.system_packages import ensure_program
from tests.test_fleet import Cloud
from tests.test_scale_to_zero import Gateway, start_gateway, wait_for

MODEL = "tiny-chat"
NODE_MODEL_DIR = "/mnt/weights/models/tiny-chat"
NODE = "spot-demo-1"
CLOUD_FLAGS = ("--real-nodes", "--create-seconds", "1", "--hibernate-seconds", "1", "--restore-seconds", "2",
               "--delete-seconds", "1")
MAX_TOKENS = 8
SPOT_TIMEOUT_S = 900  # a cold `spot up`: boot, ~1 min of pip, 1-2 min of vLLM start-up on 2 cores


@pytest.fixture(scope="session")
def real_node_image() -> Path:
    """The cached bookworm image (built on first use: ~1-3 min); the programs installed first."""
    for program, package in (("debootstrap", "debootstrap"), ("systemd-nspawn", "systemd-container")):
        ensure_program(program, package, required=True)
    started = time.monotonic()
    try:
        image = ensure_image()
    except RealNodeError as exc:
        pytest.fail(f"the real-node image could not be built on this machine: {exc}", pytrace=False)
    print(f"\nreal-node image: {'built in %.1f s' % image.built_in_s if image.built_in_s else 'cached'} "
          f"({time.monotonic() - started:.1f} s)")
    return image.root


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


@pytest.fixture(scope="session")
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
                    weights_volume_gb=2, wake_timeout_s=600, vllm=vllm,
                    idle_timeout_s=3600)  # the session shares the node: the gateway must not hibernate it
    write_fleet_config(base_url, {"demo": demo}, gateway={"keepalive_s": 5, "health_interval_s": 1, "provider_refresh_s": 2},
                       extra=f'[budget]\nenforce = false\n\n[ssh]\nkey_path = "{key}"\nconfig_file = "{key.parent / "none"}"\n')


@dataclass
class RealFleet:
    """The session's real node after its first `spot up`, and what that `spot up` did."""

    workdir: Path
    home: Path
    cloud: Cloud
    node_dir: Path
    first_up: subprocess.CompletedProcess[str]  # the first `spot up`: a fresh node, an unformatted volume
    copy: dict  # the model's copy onto the volume: {"status": (exit status, stderr), "copied_at": ...}
    gateway: Gateway | None = None
    terminated: bool = False
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def work(self) -> Path:
        return self.workdir / "work"  # holds the fleet's spot.toml

    def enter(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Make `spot` in this test act on this fleet (its SPOT_HOME, its ./spot.toml)."""
        monkeypatch.setenv("SPOT_HOME", str(self.home))
        monkeypatch.chdir(self.work)


@pytest.fixture(scope="session")
def real_fleet(real_node_image: Path, wheelhouse_url: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealFleet]:
    """A real node after its first `spot up`, serving through `spot serve`; terminated at the end."""
    workdir = tmp_path_factory.mktemp("real-fleet")
    home = workdir / "home"
    (workdir / "work").mkdir()
    nodes_dir = workdir / "cloud" / "sim-cloud" / "nodes"
    server = None
    fleet: RealFleet | None = None
    try:
        with pytest.MonkeyPatch.context() as env:  # only while this fixture runs `spot`: never leaks into tests
            env.setenv("SPOT_HOME", str(home))
            env.chdir(workdir / "work")
            ensure_vllm_installed()  # the tiny model is built with the host's vLLM env (transformers)
            model_dir = build_tiny_model()
            key = keygen(workdir / "id_ed25519")
            server, root = start_sim_cloud(workdir / "cloud", *CLOUD_FLAGS)
            cloud = Cloud(f"{root}/v1", server)
            write_config(cloud.base_url, key, wheelhouse_url)
            up: dict = {}
            copy: dict = {}
            stop = threading.Event()

            def run_up() -> None:
                try:
                    up["result"] = spot("up", "demo")
                except subprocess.TimeoutExpired as exc:
                    up["timeout"] = exc

            started = time.monotonic()
            runner = threading.Thread(target=run_up, daemon=True)
            runner.start()
            wait_for(lambda: any(nodes_dir.glob("*/node.json")) or not runner.is_alive(), 120, "the VM's node")
            node_dir = next(nodes_dir.glob("*/node.json")).parent
            copier = threading.Thread(target=copy_model_when_mounted, args=(node_dir, model_dir, copy, stop), daemon=True)
            copier.start()
            runner.join(SPOT_TIMEOUT_S)
            stop.set()
            copier.join(10)
            assert "result" in up, f"spot up did not finish within {SPOT_TIMEOUT_S} s"
            fleet = RealFleet(workdir, home, cloud, node_dir, up["result"], copy)
            fleet.figures["spot up (cold node)"] = time.monotonic() - started
            if fleet.first_up.returncode == 0:
                fleet.gateway = start_gateway(workdir, home)
                wait_for(lambda: fleet.gateway.tier("demo")["state"] == "serving", 60, "the gateway to route to the node")
        yield fleet
    finally:
        if fleet is not None and fleet.gateway is not None:
            fleet.gateway.server.stop()
        with pytest.MonkeyPatch.context() as env:
            env.setenv("SPOT_HOME", str(home))
            env.chdir(workdir / "work")
            if server is not None and not (fleet and fleet.terminated):
                spot("down", "demo", "--terminate", "--yes", timeout_s=300)
        if server is not None:
            server.stop()
        for leftover in nodes_dir.glob("*/node.json"):  # a failed test must not leave a node running
            RealNode.open(leftover.parent).delete()
        if fleet is not None and fleet.figures:
            print("\nreal-node fleet figures:")
            for name, seconds in fleet.figures.items():
                print(f"  {name}: {seconds:.1f} s")


@pytest.fixture
def real_node_served(real_fleet: RealFleet, monkeypatch: pytest.MonkeyPatch) -> RealFleet:
    """The session's real node, serving: for tests that need it up (`spot` acts on its fleet)."""
    result = real_fleet.first_up
    assert result.returncode == 0, f"the shared node's first spot up exited {result.returncode}: {result.stderr[-3000:]}"
    assert not real_fleet.terminated, "the shared real node was terminated by a test that should have run last"
    real_fleet.enter(monkeypatch)
    return real_fleet
