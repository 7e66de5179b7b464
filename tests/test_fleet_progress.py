"""What `spot up/wake/hibernate/down` say while they work, and whether it is true.

Every step that can take seconds (create, boot, bootstrap, engine load, restore, hibernate,
delete) shows the node's state, the provider's own status and the elapsed time: a live line at a
terminal, change lines (plus a heartbeat when nothing changes for 10 s) in a log, JSON lines with
--json. The words match what happened: found / created / restored / already serving; "up since"
moves only when the engine (re)started; a node's last request belongs to its VM, not its name.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import subprocess
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import SPOT, run_spot
from tests.servers import start_sim_cloud
from tests.system_packages import ensure_program
from tests.test_fleet import Cloud, ok, status_json, write_config
from tests.token_log import logged_rows

FLAGS = ["--create-seconds", "3", "--hibernate-seconds", "2", "--restore-seconds", "3", "--delete-seconds", "1"]


@pytest.fixture
def cloud(tmp_path: Path):
    server, root = start_sim_cloud(tmp_path / "cloud", *FLAGS)
    write_config(f"{root}/v1")
    cloud = Cloud(f"{root}/v1", server)
    yield cloud
    cloud.assert_no_duplicates()
    run_spot("down", "demo", "--terminate", "--yes")
    server.stop()


def lines_of(stderr: str) -> list[str]:
    """The progress lines without their "[  1.2s] " prefix."""
    return [re.sub(r"^\[\s*[\d.]+s\] ", "", line) for line in stderr.splitlines()]


def node_json() -> dict:
    [node] = status_json()
    return node


def test_the_first_up_says_what_it_creates_and_shows_every_step_with_the_provider_status(cloud: Cloud) -> None:
    result = ok("up", "demo")
    lines = lines_of(result.stderr)
    assert not [line for line in lines if "terminated" in line], lines  # nothing existed: nothing was terminated
    assert lines[0] == "spot-demo-1: creating a sim-cpu-1 VM in sim-local"
    steps = "\n".join(lines)
    for expected in ("spot-demo-1: provisioning (spot up: created VM ",
                     "spot-demo-1: provisioning: waiting for the VM to boot · provider: BUILD",
                     "spot-demo-1: bootstrapping (spot up: VM ready, starting the engine) · provider: ACTIVE",
                     "spot-demo-1: bootstrapping: the engine is loading (waiting for its /health) · provider: ACTIVE",
                     "spot-demo-1: serving (spot up: engine healthy) · provider: ACTIVE"):
        assert expected in steps, steps
    assert node_json()["state"] == "serving"


def test_up_on_a_serving_node_says_already_serving_and_up_since_moves_only_when_the_engine_restarts(
        cloud: Cloud, home: Path) -> None:
    ok("up", "demo")
    first = node_json()
    assert first["up_since"]

    again = lines_of(ok("up", "demo").stderr)
    assert "spot-demo-1: found serving · provider: ACTIVE" in again
    assert again[-1] == "spot-demo-1: already serving · provider: ACTIVE"
    assert not [line for line in again if "bootstrapping" in line or "starting the engine" in line], again
    assert node_json()["up_since"] == first["up_since"]

    # A changed engine set-up restarts the engine: now "up since" moves, and the output says why.
    write_config(cloud.base_url, sim={"load_seconds": 0.6})
    changed = lines_of(ok("up", "demo").stderr)
    assert any("bootstrapping (spot up: engine restarted)" in line or line.startswith("spot-demo-1: bootstrap: ")
               for line in changed), changed
    assert changed[-1] == "spot-demo-1: serving (spot up: engine healthy) · provider: ACTIVE"
    assert node_json()["up_since"] > first["up_since"]


def test_a_new_vm_reusing_a_name_starts_without_the_old_vms_last_request(tmp_path: Path, home: Path) -> None:
    from tests.test_scale_to_zero import start_gateway
    from tests.test_scale_to_zero import write_config as write_gateway_config

    server, root = start_sim_cloud(tmp_path / "cloud", *FLAGS)
    write_gateway_config(f"{root}/v1", fallback=False)
    try:
        ok("up", "demo")
        gateway = start_gateway(tmp_path, home)
        try:
            client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=60)
            client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        finally:
            gateway.server.stop()
        [row] = logged_rows(home, expect=1)
        assert row["node"] == "spot-demo-1"
        old = node_json()
        assert old["last_request"] is not None

        ok("down", "demo", "--terminate", "--yes")
        ok("up", "demo")
        new = node_json()
        assert new["name"] == "spot-demo-1" and new["provider_id"] != old["provider_id"]
        assert new["last_request"] is None
    finally:
        run_spot("down", "demo", "--terminate", "--yes")
        server.stop()


def test_wake_hibernate_and_down_report_each_step_and_json_lines_carry_the_same(cloud: Cloud) -> None:
    ok("up", "demo")
    hibernate = lines_of(ok("hibernate", "demo").stderr)
    assert "spot-demo-1: hibernating: waiting for the provider · provider: HIBERNATING" in hibernate
    assert hibernate[-1] == "spot-demo-1: hibernated (spot hibernate) · provider: HIBERNATED"
    assert lines_of(ok("hibernate", "demo").stderr) == ["spot-demo-1: already hibernated · provider: HIBERNATED"]

    result = ok("wake", "demo", "--json")
    assert json.loads(result.stdout)[0]["state"] == "serving"  # stdout: the one final document
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert {e["event"] for e in events} <= {"progress", "heartbeat"}
    seen = [(e["state"], e["provider_status"], e["message"]) for e in events]
    assert ("hibernated", "HIBERNATED", "found hibernated") in seen
    assert ("waking", "RESTORING", "waking: waiting for the provider to restore the VM") in seen
    assert ("waking", "ACTIVE", "waking: the engine is loading (waiting for its /health)") in seen
    assert seen[-1] == ("serving", "ACTIVE", "serving (spot wake: engine healthy)")
    elapsed = [e["elapsed_s"] for e in events]
    assert elapsed == sorted(elapsed) and elapsed[-1] > 0

    down = lines_of(ok("down", "demo", "--terminate", "--yes").stderr)
    assert any(line.startswith("spot-demo-1: deleting: waiting for the provider · provider: ") for line in down), down
    assert down[-1] == "spot-demo-1: terminated (spot down --terminate)"


def test_a_long_quiet_step_gets_a_heartbeat_line_in_a_log(tmp_path: Path) -> None:
    slow = ["--create-seconds", "1", "--hibernate-seconds", "1", "--restore-seconds", "14", "--delete-seconds", "0.5"]
    server, root = start_sim_cloud(tmp_path / "cloud", *slow)
    write_config(f"{root}/v1")
    try:
        ok("up", "demo")
        ok("hibernate", "demo")
        result = ok("wake", "demo", "--json")
        beats = [e for e in map(json.loads, result.stderr.splitlines()) if e["event"] == "heartbeat"]
        assert beats, result.stderr
        assert beats[0]["state"] == "waking" and beats[0]["provider_status"] == "RESTORING"
        assert beats[0]["elapsed_s"] >= 10
    finally:
        run_spot("down", "demo", "--terminate", "--yes")
        server.stop()


def test_at_a_terminal_wake_shows_a_live_line_with_a_ticking_clock(cloud: Cloud) -> None:
    ok("up", "demo")
    ok("hibernate", "demo")
    screen = run_with_stderr_on_a_terminal([str(SPOT), "wake", "demo"])
    assert "\x1b[" in screen  # rewritten in place, not appended
    live = re.findall(r"spot-demo-1 · (\d+) s · RESTORING · waking: waiting for the provider to restore the VM", screen)
    assert len(set(live)) >= 2, screen  # the clock ticks between the provider's reports
    assert "spot-demo-1: serving (spot wake: engine healthy) · provider: ACTIVE" in screen
    assert node_json()["state"] == "serving"


def run_with_stderr_on_a_terminal(argv: list[str]) -> str:
    """Run ``argv`` with stderr on a pseudo-terminal 100 columns wide; everything it drew there."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal closed: the process is done
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    os.close(master)
    assert proc.returncode == 0
    return b"".join(chunks).decode(errors="replace")


def test_up_in_tmux_at_80_columns_keeps_node_names_and_states_whole(cloud: Cloud, home: Path) -> None:
    """What an operator sees in an 80-column tmux pane while two nodes come up: one live line
    per node that never wraps, the node's name, clock and provider status first and whole."""
    tmux_program = ensure_program("tmux", "tmux")  # a fresh machine gets it from apt, never a skip
    write_config(cloud.base_url, sim={"load_seconds": 3})  # an engine load long enough to be seen
    socket = f"spot-test-{os.getpid()}"
    tmux = [str(tmux_program), "-L", socket]
    command = f"cd {shlex.quote(os.getcwd())} && {SPOT} up demo --nodes 2; echo EXIT=$?; sleep 60"
    subprocess.run([*tmux, "new-session", "-d", "-x", "80", "-y", "40", "env", f"SPOT_HOME={home}", "sh", "-c", command],
                   check=True, env={**os.environ, "TERM": "xterm-256color"})
    screens = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            screen = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout
            screens.append(screen)
            if "EXIT=" in screen:
                break
            time.sleep(0.2)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    assert "EXIT=0" in screens[-1], screens[-1]
    # The live lines: a spinner, then the node (the table printed at the end starts with "│").
    live = [line for screen in screens for line in screen.splitlines() if re.match(r"^\S? ?spot-demo-", line)]
    assert {re.search(r"spot-demo-\d", line).group(0) for line in live} == {"spot-demo-1", "spot-demo-2"}, live
    for line in live:
        assert len(line) <= 80 and re.match(r"^\S? ?spot-demo-[12] · \d+ s( · [A-Z]+)? · \S", line), line
    states = {m.group(1) for line in live if (m := re.search(r" · [A-Z]+ · (provisioning|bootstrapping)\b", line))}
    assert states == {"provisioning", "bootstrapping"}, "\n".join(dict.fromkeys(live))
