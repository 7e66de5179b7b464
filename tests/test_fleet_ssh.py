"""The fleet over real SSH: emulated VMs reached through a real sshd on loopback, so `spot up`
bootstraps the engine with the paramiko transport exactly as on a GPU node (minus systemd, which
the emulated nodes replace with their boot scripts), and host keys are pinned on first contact."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import run_spot
from tests.servers import start_sim_cloud
from tests.test_fleet import FAST, Cloud, ok, write_config


@pytest.fixture
def ssh_cloud(tmp_path: Path, sshd):  # noqa: ANN001
    server, root = start_sim_cloud(tmp_path / "cloud", *FAST, "--ssh-port", str(sshd.port))
    base_url = f"{root}/v1"
    write_config(base_url, extra=f'\n[ssh]\nuser = "{sshd.user}"\nkey_path = "{sshd.client_key}"\n')
    cloud = Cloud(base_url, server)
    yield cloud
    cloud.assert_no_duplicates()
    run_spot("down", "demo", "--terminate", "--yes")
    server.stop()


def test_up_hibernate_wake_down_over_ssh(ssh_cloud: Cloud, home: Path, sshd) -> None:  # noqa: ANN001
    ok("up", "demo")
    [node] = json.loads(ok("status", "--json").stdout)
    assert node["state"] == "serving"
    assert httpx.get(f"{node['engine_url']}/health").status_code == 200
    # First contact pinned the node's host key in spot's own known_hosts.
    known = (home / "known_hosts").read_text()
    assert f"[127.0.0.1]:{sshd.port}" in known

    result = ok("ssh", "spot-demo-1", "--", "sh", "-c", "cat etc/spot/engine.env | cut -d= -f1")
    assert "VLLM_API_KEY" in result.stdout

    ok("hibernate", "demo")
    assert [n["state"] for n in json.loads(ok("status", "--json").stdout)] == ["hibernated"]
    ok("wake", "demo")
    assert [n["state"] for n in json.loads(ok("status", "--json").stdout)] == ["serving"]
    ok("down", "demo", "--terminate", "--yes")
    assert ssh_cloud.vms() == []


def test_a_changed_host_key_is_refused(tmp_path: Path, sshd_factory) -> None:  # noqa: ANN001
    server_sshd = sshd_factory()
    cloud_server, root = start_sim_cloud(tmp_path / "cloud", *FAST, "--ssh-port", str(server_sshd.port))
    base_url = f"{root}/v1"
    try:
        write_config(base_url, extra=f'\n[ssh]\nuser = "{server_sshd.user}"\nkey_path = "{server_sshd.client_key}"\n')
        ok("up", "demo")
        server_sshd.restart(new_host_key=True)  # a different machine answers at the node's address
        result = run_spot("ssh", "spot-demo-1", "--", "true")
        assert result.returncode == 6
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr
        assert "host key" in errors[0].lower() and "spot-demo-1" in errors[0] and "SHA256:" in errors[0]
    finally:
        run_spot("down", "demo", "--terminate", "--yes")
        cloud_server.stop()
