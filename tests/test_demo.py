"""`spot demo` end to end, as a newcomer runs it: a child process from a clean SPOT_HOME that
reaches its cost table with real figures, and leaves no process behind whether it ends, is
interrupted with Ctrl-C, or is kept running and then stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import SPOT

pytestmark = [pytest.mark.slow, pytest.mark.shares("default-ports")]  # the demo takes 8780 and 8000 when free


def processes_tied_to(marker: Path) -> list[str]:
    """Live processes whose command line or environment names ``marker`` (the test's directory:
    the demo's children name their run directory in --config/--state-dir or SPOT_HOME, the
    emulated nodes' engines in HF_HOME)."""
    needle = os.fsencode(str(marker))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes()
            blob = cmdline + (entry / "environ").read_bytes()
        except (OSError, IndexError):
            continue
        if state != "Z" and needle in blob:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
            found.append(f"{entry.name}: {command}")
    return found


def start_demo(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], Path, Path]:
    out, err = tmp_path / "demo.out", tmp_path / "demo.err"
    # Its own session, as at a terminal the demo is the foreground job: SIGINT goes to it alone.
    proc = subprocess.Popen([str(SPOT), "demo", *args], stdout=out.open("w"), stderr=err.open("w"), text=True,
                            start_new_session=True)
    return proc, out, err


def wait_until(proc: subprocess.Popen[str], err: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in err.read_text():
            return
        assert proc.poll() is None, f"the demo exited {proc.returncode}: {err.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} after {timeout_s} s: {err.read_text()[-3000:]}")


def manifest_state(home: Path) -> list[str]:
    return [json.loads(p.read_text())["state"] for p in (home / "demo").glob("*/demo.json")]


def test_the_demo_reaches_its_cost_table_with_real_figures_and_leaves_nothing(tmp_path: Path, home: Path) -> None:
    # A shorter sleep than the default 45 s: the loop is the same, the suite 35 s faster.
    proc, out, err = start_demo(tmp_path, "--json", "--asleep-seconds", "10")
    try:
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    progress = err.read_text()
    assert proc.returncode == 0, progress[-3000:]
    result = json.loads(out.read_text())

    # The cost report over the emulator's own bill, as `spot cost` computes it.
    assert result["observable"] is True
    assert result["spend_usd"] > 0 and result["completion_tokens"] > 0 and result["prompt_tokens"] > 0
    assert result["usd_per_mtok_output"] == pytest.approx(result["spend_usd"] / result["completion_tokens"] * 1e6, rel=1e-3)
    assert 0 < result["coverage"] <= 1
    assert result["cost"]["spend_usd"] == result["spend_usd"]  # the report itself, not a restatement
    # Hibernation against an always-on tier: the VM's billed full rate over the same window.
    assert result["always_on_usd"] > result["spend_usd"] > 0
    assert result["hibernation_saving_usd"] == pytest.approx(result["always_on_usd"] - result["spend_usd"], abs=1e-6)
    assert 0 < result["hibernation_saving_share"] < 1
    # sim-cpu-1 at $0.50/h, as the emulator bills it while running (per minute, so not exactly 0.5)
    assert result["savings"]["vm_usd_per_hour"] == pytest.approx(0.5, rel=1e-6)
    # The traffic: a burst through the SDK, then requests held while the sleeping tier woke.
    assert result["burst"]["ok"] == result["burst"]["requests"] > 0 and result["burst"]["streamed"] > 0
    assert result["wake"]["ok"] == 2 and "waking" in result["wake"]["states_seen"]
    assert all(held > 1 for held in result["wake"]["held_s"])  # a restore takes 3 s at the demo's scale
    tokens = result["burst"]["completion_tokens"] + result["wake"]["completion_tokens"]
    assert result["completion_tokens"] == tokens  # every request is in the token log, nothing else
    # What the screen said along the way.
    assert "timeouts are scaled down" in progress and "40× shorter" in progress and "20× fast" in progress
    assert "hibernates in" in progress and "asleep" in progress and "request(s) held" in progress
    assert "no process left" in progress

    # Nothing it started is left, and its VMs were deleted before the emulator stopped.
    assert processes_tied_to(tmp_path) == []
    assert manifest_state(home) == ["stopped"]
    [run_dir] = (home / "demo").iterdir()
    assert not any((run_dir / "cloud" / "nodes").iterdir())


def test_ctrl_c_midway_tears_everything_down_and_exits_130(tmp_path: Path, home: Path) -> None:
    proc, _, err = start_demo(tmp_path)
    try:
        wait_until(proc, err, "letting tier demo go idle", 120)  # the VM, gateway, sampler, emulator all run
        assert len(processes_tied_to(tmp_path)) >= 4
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    progress = err.read_text()
    assert proc.returncode == 130, progress[-3000:]
    assert "tearing down" in progress and "terminated (spot demo: teardown)" in progress
    assert "no process left" in progress and progress.strip().splitlines()[-1].startswith("error: interrupted")
    assert processes_tied_to(tmp_path) == []
    assert manifest_state(home) == ["stopped"]


def test_keep_leaves_it_serving_for_an_sdk_and_stop_ends_it(tmp_path: Path, home: Path, spot) -> None:
    proc, out, err = start_demo(tmp_path, "--keep", "--json", "--asleep-seconds", "2")
    try:
        proc.wait(timeout=240)
        assert proc.returncode == 0, err.read_text()[-3000:]
        kept = json.loads(out.read_text())
        assert kept["kept"] is True and kept["stop_command"] == "spot demo --stop"
        assert "spot demo --stop" in err.read_text() and kept["key"] in err.read_text()
        assert manifest_state(home) == ["kept"]
        assert len(processes_tied_to(tmp_path)) >= 4  # emulator, sampler, gateway, the node's engine

        # The user's own client, pointed at what was printed.
        client = openai.OpenAI(base_url=kept["base_url"], api_key=kept["key"], max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        assert reply.usage.completion_tokens > 0

        stopped = spot("demo", "--stop", "--json")
        assert stopped.returncode == 0, stopped.stderr
        [run] = json.loads(stopped.stdout)["stopped"]
        assert run["processes"] >= 4
        assert processes_tied_to(tmp_path) == []
        assert manifest_state(home) == ["stopped"]
        again = spot("demo", "--stop")
        assert again.returncode == 0 and "no demo is running" in again.stdout
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if processes_tied_to(tmp_path):
            spot("demo", "--stop")
