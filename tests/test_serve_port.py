"""`spot serve` on a port that is taken: one line naming host:port, `--port` and what holds it,
exit 10, and no "spot gateway on" line; on a free port that line comes only once it answers."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import SPOT, run_spot
from tests.servers import clean_env, free_port

STATIC = ["--upstream", "tiny-chat=http://127.0.0.1:9"]  # no fleet: nothing to wake or sample


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port this test process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_taken_port_is_one_line_naming_it_and_exit_10(taken_port: int) -> None:
    result = run_spot("serve", "--port", str(taken_port), *STATIC)
    assert result.returncode == 10, result.stderr
    [line] = result.stderr.splitlines()
    assert f"127.0.0.1:{taken_port} is already in use" in line and "--port" in line
    assert f"held by pid {os.getpid()}" in line  # this test's process holds it
    assert "spot gateway on" not in result.stderr and "Traceback" not in result.stderr and result.stdout == ""


def test_a_taken_operator_port_names_its_setting(taken_port: int) -> None:
    result = run_spot("serve", "--port", str(free_port()), *STATIC,
                      env={"SPOT_GATEWAY__OPERATOR_PORT": str(taken_port)})
    assert result.returncode == 10, result.stderr
    [line] = result.stderr.splitlines()
    assert f"127.0.0.1:{taken_port} is already in use" in line and "gateway.operator_port" in line


def test_a_bad_log_option_is_one_line_and_exit_2() -> None:
    result = run_spot("serve", "--port", str(free_port()), *STATIC, "--log-level", "verbose")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "--log-level 'verbose'" in line and "debug, info, warning, error" in line


def test_the_gateway_says_where_it_is_only_once_it_answers(home: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([str(SPOT), "serve", "--port", str(port), *STATIC], env=clean_env(home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("spot gateway on"):
                break
        assert seen and seen[-1].startswith(f"spot gateway on http://127.0.0.1:{port}/v1"), seen
        # Printed once listening: the very next request is answered (no retry).
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        # While it runs, a second gateway on the same port is refused with exit 10.
        second = run_spot("serve", "--port", str(port), *STATIC)
        assert second.returncode == 10 and f"held by pid {proc.pid}" in second.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
