"""`spot status` on a real terminal at 80 columns (issue 22, finding 8 and `status --watch`).

A detached tmux session 80 columns wide runs `spot up` then `spot status --watch`, as an operator
in a narrow window would; the test reads the screen with `tmux capture-pane` and checks that node
names, states and $/h are whole (no `…`), that the watch redraws in place, and that Ctrl-C ends
it with exit 0."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import SPOT, run_spot
from tests.fleet_config import sim_tier, write_fleet_config
from tests.servers import start_sim_cloud
from tests.system_packages import ensure_program
from tests.test_fleet import FAST

TIER = "chat-ondemand"  # a long tier name: its nodes are spot-chat-ondemand-N
NODE = f"spot-{TIER}-1"


class Pane:
    """One detached tmux session on a private server socket, 80 × 30."""

    def __init__(self, tmux: Path, socket: Path) -> None:
        self.tmux = tmux
        self.socket = socket

    def run(self, *args: str) -> str:
        done = subprocess.run([str(self.tmux), "-S", str(self.socket), *args], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, f"tmux {' '.join(args)}: {done.stderr}"
        return done.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "spot")

    def wait_for(self, seen: Callable[[str], bool], what: str, timeout_s: float = 180.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            screen = self.screen()
            if seen(screen):
                return screen
            time.sleep(0.5)
        pytest.fail(f"the screen never showed {what}; it shows:\n{self.screen()}")


@pytest.fixture
def operator(tmp_path: Path, home: Path) -> Iterator[Callable[..., Pane]]:
    """Starts the emulator and a tmux session running `spot up TIER` and then ``commands``, each
    followed by ``echo "<command> exited $?"``."""
    tmux = ensure_program("tmux", "tmux")
    server, root = start_sim_cloud(tmp_path / "cloud", *FAST)
    write_fleet_config(f"{root}/v1", {TIER: sim_tier(weights_volume="chat-weights", weights_volume_gb=10,
                                                     sim={"load_seconds": 0.5})})
    pane = Pane(tmux, tmp_path / "tmux.sock")

    def start(*commands: str) -> Pane:
        spot = shlex.quote(str(SPOT))
        script = tmp_path / "operator.sh"
        script.write_text("\n".join([
            f"cd {shlex.quote(str(Path.cwd()))}",
            f"export SPOT_HOME={shlex.quote(str(home))}",
            f"{spot} up {TIER}",
            *(f'{spot} {command}; echo "{command.split()[0]} exited $?"' for command in commands),
            "sleep 600",
            "",
        ]))
        pane.run("new-session", "-d", "-s", "spot", "-x", "80", "-y", "30", f"bash {shlex.quote(str(script))}")
        return pane

    try:
        yield start
    finally:
        subprocess.run([str(tmux), "-S", str(pane.socket), "kill-server"], capture_output=True, timeout=30)
        run_spot("down", TIER, "--terminate", "--volumes", "--yes")
        server.stop()


def test_up_then_status_watch_at_80_columns_shows_names_states_and_rates_whole(operator) -> None:  # noqa: ANN001
    pane = operator("status --watch --interval 1")
    screen = pane.wait_for(lambda s: "Ctrl-C to stop" in s and re.search(rf"{NODE}\b.*\bserving\b", s) is not None,
                           "the watch with the node serving")
    [node] = json.loads(run_spot("status", "--json").stdout)
    rate = f"{node['usd_per_hour']:.3f}"

    assert all(len(line) <= 80 for line in screen.splitlines())
    rows = [line for line in screen.splitlines() if NODE in line]
    assert len(rows) >= 2, screen  # `spot up`'s own table and the watch's
    for row in rows:
        if "│" not in row:
            continue  # a progress line of `spot up`
        cells = [cell.strip() for cell in row.split("│")]
        assert NODE in cells and "serving" in cells and rate in cells, f"cut row: {row!r}\n{screen}"
    table_rows = [row for row in rows if "│" in row]
    assert table_rows, screen
    assert "…" not in "\n".join(table_rows), screen
    assert "billing while asleep: $" in screen and "(1 volume, 10 GB)" in screen
    assert "last request" not in screen  # empty in every row: no space spent on it
    wide = run_spot("status", env={"COLUMNS": "200"}).stdout
    assert "provider id" in wide and "up since" in wide and "last request" not in wide

    # In place: a later screen still shows one watch, with a newer time stamp.
    def stamp(text: str) -> list[str]:
        return re.findall(r"Ctrl-C to stop · (\S+ \S+) UTC", text)

    [first] = stamp(screen)
    later = pane.wait_for(lambda s: len(stamp(s)) == 1 and stamp(s)[0] != first, "a second refresh in place")
    assert re.search(rf"{NODE}\b.*\bserving\b", later)

    pane.run("send-keys", "-t", "spot", "C-c")
    done = pane.wait_for(lambda s: "status exited" in s, "the watch ending on Ctrl-C", timeout_s=30)
    assert "status exited 0" in done
    assert "Traceback" not in done


def test_down_with_volumes_asks_at_a_terminal_and_deletes_them_on_yes(operator) -> None:  # noqa: ANN001
    pane = operator(f"down {TIER} --terminate --volumes", "volumes")
    pane.wait_for(lambda s: "weights volumes?" in s and "[y/N]" in s, "the confirmation prompt")
    pane.run("send-keys", "-t", "spot", "y", "Enter")
    screen = pane.wait_for(lambda s: "volumes exited" in s, "the deletion and `spot volumes` after it")
    assert "down exited 0" in screen and "volume chat-weights (10 GB): deleted" in screen
    assert "no volumes in the configured accounts" in screen
    assert json.loads(run_spot("volumes", "--json").stdout) == []


def test_status_watch_piped_with_json_prints_one_line_per_refresh_and_ctrl_c_exits_0(tmp_path: Path) -> None:
    import os
    import signal

    server, root = start_sim_cloud(tmp_path / "cloud", *FAST)
    try:
        write_fleet_config(f"{root}/v1", {TIER: sim_tier()})
        watch = subprocess.Popen([str(SPOT), "status", "--watch", "--interval", "0.5", "--json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        try:
            lines = [watch.stdout.readline() for _ in range(2)]  # type: ignore[union-attr]
            assert [json.loads(line) for line in lines] == [[], []]  # no nodes yet, refreshed
        finally:
            watch.send_signal(signal.SIGINT)
            _, stderr = watch.communicate(timeout=30)
        assert watch.returncode == 0, stderr
        assert "Traceback" not in stderr
    finally:
        server.stop()
