"""What the fleet says about a failing engine unit (nodes/engine_watch.py), from what systemd and
the journal print, through a real transport running a stand-in `systemctl`/`sudo` on this
machine. The real crash loop on a real node is in test_real_node_drills.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spotinference.nodes.engine_watch import EngineUnitFailedError, EngineWatch
from spotinference.nodes.local import LocalTransport

JOURNAL = """INFO 12-06 01:00:00 [api_server.py:1] vLLM API server version 0.32.0
usage: api_server.py [-h] [--host HOST]
                     [--jit-monitor-mode {error,warn}]
api_server.py: error: unrecognized arguments: --no-such-vllm-flag
"""


def node_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, show: str, journal: str = JOURNAL) -> LocalTransport:
    """Programs named systemctl and sudo first on PATH, printing what a node's would."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (tmp_path / "show").write_text(show)
    (tmp_path / "journal").write_text(journal)
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\ncat {tmp_path / 'show'}\n")
    (bin_dir / "sudo").write_text(f"#!/bin/sh\ncat {tmp_path / 'journal'}\n")  # only journalctl goes through sudo here
    for program in ("systemctl", "sudo"):
        (bin_dir / program).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return LocalTransport("spot-demo-1")


def show(active: str, sub: str, restarts: int, result: str) -> str:
    return f"ActiveState={active}\nSubState={sub}\nNRestarts={restarts}\nResult={result}\n"


def test_two_restarts_after_the_first_check_are_a_crash_loop(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    transport = node_with(tmp_path, monkeypatch, show=show("activating", "auto-restart", 0, "exit-code"))
    watch = EngineWatch(transport)
    watch.check()
    (tmp_path / "show").write_text(show("activating", "auto-restart", 1, "exit-code"))
    watch.check()  # one restart: an engine killed once comes back; not yet a loop
    (tmp_path / "show").write_text(show("activating", "auto-restart", 2, "exit-code"))
    with pytest.raises(EngineUnitFailedError) as caught:
        watch.check()
    message = str(caught.value)
    assert caught.value.exit_code == 7 and "\n" not in message
    assert message == ("node spot-demo-1: the engine unit spot-engine is crash-looping (systemd: 2 restarts, now "
                       "activating/auto-restart, last result exit-code); its last words: "
                       "api_server.py: error: unrecognized arguments: --no-such-vllm-flag")
    assert "spot logs spot-demo-1" in caught.value.hint


def test_restarts_before_the_wait_began_do_not_count(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    # Also when spot just restarted the unit: systemd keeps the count of the crash loop it replaced.
    transport = node_with(tmp_path, monkeypatch, show=show("active", "running", 5, "success"))
    watch = EngineWatch(transport)
    watch.check()  # killed five times last month (or a bad flag just fixed), loading now: no crash loop
    (tmp_path / "show").write_text(show("active", "running", 6, "success"))
    watch.check()
    (tmp_path / "show").write_text(show("activating", "auto-restart", 7, "signal"))
    with pytest.raises(EngineUnitFailedError, match="crash-looping"):
        watch.check()


def test_a_unit_that_failed_or_exited_stops_the_wait_at_once(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    transport = node_with(tmp_path, monkeypatch, show=show("failed", "failed", 0, "start-limit-hit"),
                          journal="Traceback (most recent call last):\nOSError: /mnt/weights/models/x does not exist\n")
    with pytest.raises(EngineUnitFailedError) as caught:
        EngineWatch(transport).check()
    assert "is stopped (systemd: 0 restarts, now failed/failed, last result start-limit-hit)" in str(caught.value)
    assert str(caught.value).endswith("its last words: OSError: /mnt/weights/models/x does not exist")
