"""Lifecycle drills on a real node (issue 18, item 4): what happens to a served tier when something
breaks inside its node. The session's shared node (tests/real_node_fleet.py: `spot up` on `spot sim
cloud --real-nodes`, the production bootstrap, and a gateway), shared with test_real_node_e2e.py;
each drill in turn, each leaving it serving.

Drills: vLLM killed with SIGKILL (systemd's Restart=on-failure brings it back; the gateway holds a
request through the gap), a wake whose node boots without sshd for 20 s (`spot wake` waits and says
"waiting for SSH"), a reboot from inside the node (`spot ssh NODE -- sudo systemctl reboot`: the node
boots again, the volume is mounted, the unit starts, vLLM is not reinstalled), the weights volume
full (the engine serving keeps serving; the bootstrap's model upload fails in one line naming the
device, the mount point, the space needed and free, copies nothing half, and completes once space
is freed), a crash-looping engine (a bad vLLM flag: `spot up` stops early, exit 7, one line).
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import openai
import pytest

from spotinference.fleet.operations import UP_DEADLINE_S
from spotinference.sim.realnode import RealNode
from tests.engines.real_vllm import build_tiny_model
from tests.real_node_fleet import MAX_TOKENS, NODE, NODE_MODEL_DIR, SPOT_TIMEOUT_S, RealFleet, chat, on_node, spot, spot_ok
from tests.test_scale_to_zero import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def drill(real_node_served: RealFleet) -> RealFleet:
    """The session's shared real node, serving (tests/real_node_fleet.py); each drill leaves it serving."""
    return real_node_served


def test_an_engine_killed_with_sigkill_is_restarted_by_systemd_and_the_gateway_bridges_the_gap(drill: RealFleet) -> None:
    gateway = drill.gateway
    first_pid = on_node("systemctl", "show", "-p", "MainPID", "--value", "spot-engine").strip()
    assert first_pid not in ("", "0")

    # watch the gateway's view of the tier from now on
    states: list[str] = []
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            try:
                states.append(gateway.tier("demo")["state"])
            except Exception as exc:  # noqa: BLE001 - a gateway that stops answering /health is a finding
                states.append(f"health failed: {exc!r}")
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        RealNode.open(drill.node_dir).run_inside(["kill", "-9", first_pid])
        # Sent before the gateway's health check has noticed: the dying engine may have received it, so
        # the gateway must not send it again (it is not idempotent); a 502 engine_error that says so is
        # the answer, as for any engine that drops a request (issue 16); never a 500 or a hang.
        try:
            reply = chat(gateway.url, gateway.key, "are you there")
            assert reply.usage.completion_tokens == MAX_TOKENS
            before_noticed = "answered"
        except openai.APIStatusError as exc:
            code = exc.body.get("code") if isinstance(exc.body, dict) else None
            assert exc.status_code == 503 or (exc.status_code, code) == (502, "engine_error"), \
                f"{exc.status_code}: {exc.response.text}"
            assert exc.body and exc.body.get("message"), exc.response.text
            before_noticed = f"{exc.status_code} {exc.body.get('code')}: {exc.body.get('message')}"
        print(f"\nrequest right after the kill: {before_noticed}")
        # Sent once the gateway has seen the gap: held until the engine is back and answered (or a clear 503).
        wait_for(lambda: any(state != "serving" for state in states) or gateway.tier("demo")["state"] != "serving",
                 60, "the gateway to notice the engine's gap")
        try:
            reply = chat(gateway.url, gateway.key, "are you there")
            assert reply.usage.completion_tokens == MAX_TOKENS
            during_gap = "answered"
        except openai.APIStatusError as exc:
            assert exc.status_code == 503, f"{exc.status_code}: {exc.response.text}"
            assert exc.body and exc.body.get("message"), exc.response.text
            during_gap = f"503 {exc.body.get('code')}: {exc.body.get('message')}"
        print(f"request during the engine's gap: {during_gap}")

        # systemd restarted it (Restart=on-failure): a new process, one restart counted
        wait_for(lambda: on_node("systemctl", "is-active", "spot-engine").strip() == "active", 300,
                 "systemd to restart the engine")
        second_pid = on_node("systemctl", "show", "-p", "MainPID", "--value", "spot-engine").strip()
        assert second_pid not in ("", "0", first_pid)
        assert int(on_node("systemctl", "show", "-p", "NRestarts", "--value", "spot-engine").strip()) >= 1
        journal = spot_ok("logs", NODE, "--lines", "400", timeout_s=120).stdout
        assert "SIGKILL" in journal or "status=9/KILL" in journal, journal[-3000:]

        # serving resumes through the gateway
        wait_for(lambda: gateway.tier("demo")["state"] == "serving", 300, "the gateway to serve again")
        reply = chat(gateway.url, gateway.key, "back again")
        assert reply.usage.completion_tokens == MAX_TOKENS and reply.choices[0].message.content
    finally:
        watching.set()
        watcher.join(5)
    seen = list(dict.fromkeys(states))
    print(f"gateway's tier states during the drill: {seen}")
    assert not any(state.startswith("health failed") for state in seen), seen
    assert any(state != "serving" for state in seen), f"the gateway never saw the engine's gap: {seen}"


def test_a_wake_whose_node_boots_without_sshd_waits_for_it_and_says_so(drill: RealFleet) -> None:
    spot_ok("hibernate", "demo")
    wait_for(lambda: not RealNode.open(drill.node_dir).is_running(), 120, "the node to power off")
    # sshd will not start on the next boot (masked on the powered-off node's disk)
    masked = drill.node_dir / "upper" / "etc" / "systemd" / "system" / "ssh.service"
    masked.parent.mkdir(parents=True, exist_ok=True)
    masked.symlink_to("/dev/null")

    wake: dict = {}
    runner = threading.Thread(target=lambda: wake.setdefault("result", spot("wake", "demo")), daemon=True)
    runner.start()
    node = RealNode.open(drill.node_dir)

    def booted_without_sshd() -> bool:
        try:
            return node.run_inside(["systemctl", "is-system-running", "--wait"], timeout_s=60).strip() != ""
        except Exception:  # noqa: BLE001 - not running yet, or not yet up
            return False

    wait_for(booted_without_sshd, 180, "the node to boot")
    time.sleep(20)  # sshd down for a while after the node booted
    assert runner.is_alive(), f"the wake ended while sshd was down: {wake}"
    node.run_inside(["/bin/sh", "-c", "systemctl unmask ssh && systemctl start ssh"])
    runner.join(SPOT_TIMEOUT_S)
    result = wake.get("result")
    assert result is not None, "spot wake did not finish"
    said = result.stdout + result.stderr
    assert result.returncode == 0, said[-3000:]
    assert "waiting for SSH" in said, said[-3000:]

    wait_for(lambda: drill.gateway.tier("demo")["state"] == "serving", 120, "the gateway to serve again")
    reply = chat(drill.gateway.url, drill.gateway.key, "after sshd came back")
    assert reply.usage.completion_tokens == MAX_TOKENS and reply.choices[0].message.content


def test_a_node_rebooted_from_inside_boots_again_mounts_its_volume_and_serves_without_reinstalling(drill: RealFleet) -> None:
    marker = "/opt/spot/vllm/.spot-installed"
    installed_at = on_node("stat", "-c", "%Y", marker).strip()
    boot_id = on_node("cat", "/proc/sys/kernel/random/boot_id").strip()

    spot("ssh", NODE, "--", "sudo", "systemctl", "reboot", timeout_s=120)  # the session may drop: any exit

    def rebooted() -> bool:
        try:
            return RealNode.open(drill.node_dir).run_inside(["cat", "/proc/sys/kernel/random/boot_id"]).strip() != boot_id
        except Exception:  # noqa: BLE001 - down while it reboots
            return False

    wait_for(rebooted, 180, "the node to boot again")
    wait_for(lambda: spot("ssh", NODE, "--", "systemctl", "is-active", "spot-engine", timeout_s=120).stdout.strip()
             == "active", 300, "the unit to start on boot (sshd may still be starting)")
    assert on_node("mountpoint", "-d", "/mnt/weights") == on_node("mountpoint", "-x", "/dev/vdb")
    assert on_node("stat", "-c", "%Y", marker).strip() == installed_at  # vLLM was not reinstalled

    wait_for(lambda: drill.gateway.tier("demo")["state"] == "serving", 300, "the gateway to serve again")
    reply = chat(drill.gateway.url, drill.gateway.key, "after the reboot")
    assert reply.usage.completion_tokens == MAX_TOKENS and reply.choices[0].message.content



def free_bytes_on_volume(node: RealNode) -> int:
    return int(node.run_inside(["df", "-P", "-B1", "/mnt/weights"]).splitlines()[-1].split()[3])


def test_a_full_weights_volume_fails_the_model_upload_in_one_line_leaves_no_half_copy_and_a_rerun_completes(
    drill: RealFleet,
) -> None:
    node = RealNode.open(drill.node_dir)
    model_dir = build_tiny_model()
    engine_pid = on_node("systemctl", "show", "-p", "MainPID", "--value", "spot-engine").strip()
    config = Path("spot.toml")
    good = config.read_text()
    uploaded = "/mnt/weights/models/tiny-chat-uploaded"
    assert f'model = "{NODE_MODEL_DIR}"' in good
    try:
        # the volume fills (another model, the engine's caches): 1 MiB left, the model needs ~3
        node.run_inside(["fallocate", "-l", str(free_bytes_on_volume(node) - 2**20), "/mnt/weights/filler"])
        free = free_bytes_on_volume(node)
        assert free < 2 * 2**20

        # the engine already serving keeps serving: its weights are loaded, it writes nothing it needs
        reply = chat(drill.gateway.url, drill.gateway.key, "on a full volume")
        assert reply.usage.completion_tokens == MAX_TOKENS and reply.choices[0].message.content

        # the bootstrap uploading a model onto it: one line, nothing half-copied, the engine untouched
        config.write_text(good.replace(f'model = "{NODE_MODEL_DIR}"',
                                       f'model = "{uploaded}"\nmodel_upload = "{model_dir}"'))
        result = spot("up", "demo")
        assert result.returncode == 7, result.stdout + result.stderr
        [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.stderr.strip().splitlines()[-1] == line
        assert f"node {NODE}: weights volume /dev/vdb at /mnt/weights is full: uploading the model to {uploaded} needs " \
               in line, line
        needed = float(line.split(" needs ")[1].split(" MiB")[0])
        said_free = float(line.split(", ")[-1].split(" MiB free")[0])
        assert needed >= 2.8 and said_free < 2 and abs(said_free - free / 2**20) < 0.5, line
        assert on_node("ls", "-a", "/mnt/weights/models").split() == [".", "..", "tiny-chat"]  # no partial copy
        assert on_node("systemctl", "show", "-p", "MainPID", "--value", "spot-engine").strip() == engine_pid
        reply = chat(drill.gateway.url, drill.gateway.key, "still serving")
        assert reply.usage.completion_tokens == MAX_TOKENS

        # space freed: the same command completes, and the engine serves the uploaded copy
        node.run_inside(["rm", "/mnt/weights/filler"])
        again = spot_ok("up", "demo")
        said = again.stdout + again.stderr
        assert "uploading the model (" in said and "restarted spot-engine" in said, said
        assert on_node("sha256sum", f"{uploaded}/model.safetensors").split()[0] == \
            hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
        assert sorted(on_node("ls", "-a", "/mnt/weights/models").split()) == [".", "..", "tiny-chat", "tiny-chat-uploaded"]
        assert f"--model {uploaded}" in on_node("cat", "/opt/spot/run-engine.sh")
        wait_for(lambda: drill.gateway.tier("demo")["state"] == "serving", 300, "the gateway to serve again")
        reply = chat(drill.gateway.url, drill.gateway.key, "from the uploaded copy")
        assert reply.usage.completion_tokens == MAX_TOKENS and reply.choices[0].message.content
        # a third run uploads nothing
        third = spot_ok("up", "demo")
        assert "uploading" not in third.stdout + third.stderr and "already serving" in third.stdout + third.stderr
    finally:
        config.write_text(good)
        node.run_inside(["rm", "-f", "/mnt/weights/filler"])
    spot_ok("up", "demo")  # back to the module's model for the drills after this one
    wait_for(lambda: drill.gateway.tier("demo")["state"] == "serving", 300, "the gateway to serve again")

CRASH_LOOP_BOUND_S = 600  # generous (vLLM's start-up, three times, on 2 shared cores); `spot up` waits 3600 s


def test_a_crash_looping_engine_stops_spot_up_early_with_one_line_and_the_node_left_for_inspection(
    drill: RealFleet,
) -> None:
    assert CRASH_LOOP_BOUND_S < UP_DEADLINE_S / 2
    config = Path("spot.toml")
    good = config.read_text()
    bad_flag = "--no-such-vllm-flag"
    assert '"--enforce-eager"]' in good
    try:
        # vLLM refuses an argument it does not know and exits; systemd restarts it every RestartSec, for ever
        config.write_text(good.replace('"--enforce-eager"]', f'"--enforce-eager", "{bad_flag}"]'))
        started = time.monotonic()
        result = spot("up", "demo", timeout_s=CRASH_LOOP_BOUND_S + 120)
        took_s = time.monotonic() - started
        print(f"\nspot up on a crash-looping engine returned in {took_s:.0f} s: {result.stderr.strip()[-600:]}")
        assert result.returncode == 7, result.stdout + result.stderr
        assert took_s < CRASH_LOOP_BOUND_S, f"spot up took {took_s:.0f} s to notice the crash loop"
        [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.stderr.strip().splitlines()[-1] == line
        assert f"node {NODE}:" in line and "engine unit spot-engine is crash-looping" in line, line
        assert "(systemd: " in line and "restarts" in line, line
        assert bad_flag in line, line  # the gist: vLLM's own complaint
        assert f"spot logs {NODE}" in line, line

        # left for inspection: the node runs, the unit still restarting, its journal readable
        assert RealNode.open(drill.node_dir).is_running()
        assert on_node("systemctl", "show", "-p", "Restart", "--value", "spot-engine").strip() == "on-failure"
        journal = spot_ok("logs", NODE, "--lines", "400", timeout_s=120).stdout
        assert bad_flag in journal, journal[-3000:]
        status = spot("status", timeout_s=120)
        assert NODE in status.stdout and "failed" in status.stdout, status.stdout + status.stderr
    finally:
        config.write_text(good)
    # fixed, `spot up` brings it back
    again = spot_ok("up", "demo")
    assert "restarted spot-engine" in again.stdout + again.stderr, again.stdout + again.stderr
    wait_for(lambda: drill.gateway.tier("demo")["state"] == "serving", 300, "the gateway to serve again")
    reply = chat(drill.gateway.url, drill.gateway.key, "after the fix")
    assert reply.usage.completion_tokens == MAX_TOKENS and reply.choices[0].message.content
