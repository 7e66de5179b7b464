"""`spot requests --key/--model/--status/--since/--follow`, on rows a real gateway logged for real clients."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest

from spotinference.keys import create_key
from spotinference.store import Store
from tests.conftest import SPOT, run_spot
from tests.servers import ServerProcess, clean_env, start_gateway

MESSAGES = [{"role": "user", "content": "Say something about rented GPUs."}]


@dataclass
class Logged:
    home: Path
    url: str
    keys: dict[str, str]
    gateway: ServerProcess

    def client(self, name: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.keys[name], max_retries=0)

    def spot(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_spot(*args, env={"SPOT_HOME": str(self.home)})


def chat(client: openai.OpenAI, model: str = "tiny-chat") -> None:
    client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8)


@pytest.fixture(scope="module")
def logged(sim_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    """A gateway serving tiny-chat (and other-chat, which the engine does not have), with three keys:
    alice sent two requests, bob one good and one the engine refused, carol none."""
    home = tmp_path_factory.mktemp("requests-home")
    store = Store(home)
    keys = {name: create_key(store, name).key for name in ("alice", "bob", "carol")}
    gateway, url = start_gateway(home, {"tiny-chat": sim_engine, "other-chat": sim_engine})
    stack = Logged(home, url, keys, gateway)
    chat(stack.client("alice"))
    chat(stack.client("alice"))
    chat(stack.client("bob"))
    with pytest.raises(openai.APIStatusError) as refused:
        chat(stack.client("bob"), model="other-chat")
    stack.refused_status = refused.value.status_code  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30  # the gateway spools rows off the hot path
    while len(json.loads(stack.spot("requests", "--json").stdout)) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    yield stack
    gateway.stop()


def listed(stack: Logged, *args: str) -> list[dict]:
    result = stack.spot("requests", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_fixture_logged_four_requests(logged: Logged) -> None:
    rows = listed(logged)
    assert len(rows) == 4
    assert sorted(r["key_name"] for r in rows) == ["alice", "alice", "bob", "bob"]


def test_key_filter(logged: Logged) -> None:
    assert [r["key_name"] for r in listed(logged, "--key", "alice")] == ["alice", "alice"]
    assert listed(logged, "--key", "carol") == []


def test_model_and_status_filters_combine(logged: Logged) -> None:
    refused = logged.refused_status  # type: ignore[attr-defined]
    assert 400 <= refused < 600
    other = listed(logged, "--model", "other-chat")
    assert [(r["key_name"], r["status"]) for r in other] == [("bob", refused)]
    assert [r["status"] for r in listed(logged, "--key", "bob", "--status", "200")] == [200]
    assert [r["model"] for r in listed(logged, "--key", "bob", "--status", f"{str(refused)[0]}xx")] == ["other-chat"]
    assert listed(logged, "--key", "alice", "--model", "other-chat") == []
    assert len(listed(logged, "--status", "2xx", "--model", "tiny-chat")) == 3


def test_since_filter(logged: Logged) -> None:
    assert len(listed(logged, "--since", "1h")) == 4
    assert listed(logged, "--since", datetime.now(UTC).replace(year=datetime.now(UTC).year + 1).isoformat()) == []
    assert len(listed(logged, "--since", "2000-01-01")) == 4


def test_the_table_has_human_titles_and_empty_results_say_what_to_do(logged: Logged) -> None:
    table = logged.spot("requests", "--key", "alice")  # 80 columns, as captured output is
    assert table.returncode == 0
    assert "started (UTC)" in table.stdout and "output" in table.stdout and "completion_tokens" not in table.stdout
    assert "TTFT ms" not in table.stdout  # none of these was streamed: the empty column is left out
    data = [line.split() for line in table.stdout.splitlines() if "tiny-chat" in line]
    assert len(data) == 2 and all(row[2:5] == ["tiny-chat", "alice", "200"] for row in data)
    assert max(len(line) for line in table.stdout.splitlines()) <= 80
    none = logged.spot("requests", "--key", "carol")
    assert none.returncode == 0 and none.stdout.strip() == "no requests match these filters: drop one, or widen --since"


def test_bad_filters_are_one_line_exit_2(logged: Logged) -> None:
    for args, start in [(("--key", "dave"), "error: --key 'dave' names no key (known: alice, bob, carol)"),
                        (("--status", "7xx"), "error: --status '7xx' is not an HTTP status"),
                        (("--since", "yesterday"), "error: --since 'yesterday' is not a time")]:
        result = logged.spot("requests", *args)
        assert result.returncode == 2 and result.stderr.startswith(start), result.stderr
        assert len(result.stderr.splitlines()) == 1 and result.stdout == ""


def test_an_empty_log_says_how_to_fill_it(spot) -> None:
    result = spot("requests")
    assert result.returncode == 0
    assert result.stdout.startswith("no requests logged yet: start the gateway (spot serve)")
    assert "spot keys create NAME" in result.stdout
    assert spot("requests", "--json").stdout.strip() == "[]"


class Follower:
    """`spot requests --follow --json ARGS` in the background, its lines collected as they come."""

    def __init__(self, stack: Logged, *args: str) -> None:
        self.proc = subprocess.Popen([str(SPOT), "requests", "--follow", "--json", *args], env=clean_env(stack.home),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def wait_for(self, count: int, timeout_s: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while len(self.lines) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.lines

    def stop(self) -> tuple[int, str]:
        os.kill(self.proc.pid, signal.SIGINT)
        _, err = self.proc.communicate(timeout=30)
        self.reader.join(timeout=5)
        return self.proc.returncode, err


def test_follow_prints_new_matching_requests_until_ctrl_c(logged: Logged) -> None:
    follower = Follower(logged, "--key", "bob", "--status", "2xx")
    try:
        lines = follower.wait_for(1)
        assert [(r["key_name"], r["status"]) for r in lines] == [("bob", 200)]  # what was there already
        chat(logged.client("alice"))  # filtered out
        chat(logged.client("bob"))
        lines = follower.wait_for(2)
        assert len(lines) == 2 and lines[1]["key_name"] == "bob" and lines[1]["status"] == 200
        assert lines[1]["id"] != lines[0]["id"]
        time.sleep(2.5)  # two more polls: nothing is shown twice
    finally:
        code, err = follower.stop()
    assert code == 0, err
    assert "stopped" in err and "Traceback" not in err
    assert len(follower.lines) == 2, "a row was shown twice or one that does not match was shown"


def test_follow_shows_only_the_last_n_then_only_new_ones(logged: Logged) -> None:
    before = [r["id"] for r in listed(logged, "--model", "tiny-chat")]
    assert len(before) >= 3
    follower = Follower(logged, "--last", "1", "--model", "tiny-chat")
    try:
        assert [r["id"] for r in follower.wait_for(1)] == before[:1]
        chat(logged.client("carol"))
        lines = follower.wait_for(2)
        time.sleep(2.5)  # older rows, finished before the follow began, must not come up as new
    finally:
        code, err = follower.stop()
    assert code == 0, err
    assert len(follower.lines) == 2 and follower.lines[1]["key_name"] == "carol", [r["key_name"] for r in lines]


def test_follow_in_a_table_prints_a_header_then_one_line_per_request(logged: Logged) -> None:
    proc = subprocess.Popen([str(SPOT), "requests", "--follow", "--key", "alice", "--last", "2"],
                            env=clean_env(logged.home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["started", "(UTC)", "model", "key"]
    assert len(rows) == 2 and all(row.split()[2:5] == ["tiny-chat", "alice", "200"] for row in rows)
    assert max(len(line) for line in out.splitlines()) <= 80
