"""The README stays true: its tour runs exactly as written against the embedded default, every
`spot …` command it shows exists, and its first two commands are the demo and the test suite
(`.ci/run` runs the second)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_spot

README = (ROOT / "README.md").read_text()
TOUR_MARK = "<!-- readme-test: tour -->"


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)


def marked_block(mark: str) -> str:
    after = README.split(mark, 1)[1]
    match = re.match(r"\s*```sh\n(.*?)^```", after, flags=re.M | re.S)
    assert match, f"no sh block after {mark}"
    return match.group(1)


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_the_first_two_commands_are_the_demo_and_the_test_suite() -> None:
    commands = [body.strip() for lang, body in code_blocks(README) if lang == "sh"][:2]
    assert commands[0] == "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/spot demo"
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines(), ".ci/run must run exactly the README's test command"


def test_every_spot_command_in_the_readme_exists() -> None:
    shown: set[tuple[str, ...]] = set()
    for _, body in code_blocks(README):
        for line in body.splitlines():
            command = re.split(r"\s#", line, maxsplit=1)[0]  # not the comments
            for match in re.finditer(r"(?:^|\$\(|&&|;|\|)\s*(?:\.venv/bin/)?spot ([a-z]+(?: [a-z]+)?)", command):
                shown.add(tuple(match.group(1).split()))
    assert len(shown) > 15
    for words in sorted(shown):
        # "spot sim cloud" is a subcommand; "spot up demo" is a command and its argument.
        result = run_spot(*words, "--help")
        if result.returncode != 0:
            result = run_spot(words[0], "--help")
        assert result.returncode == 0, f"`spot {' '.join(words)}` from the README is not a command: {result.stderr}"


@pytest.mark.slow
@pytest.mark.shares("default-ports")  # the tour needs 8780 and 8000 free
def test_the_tour_runs_as_written(tmp_path: Path, home: Path) -> None:
    # The tour runs as a user would, on the embedded default's ports: never skipped, a taken port
    # is a failure that says so.
    assert port_free(8780) and port_free(8000), "the README tour needs ports 8780 and 8000 free: stop whatever holds them"
    script = marked_block(TOUR_MARK)
    work = tmp_path / "checkout"
    work.mkdir()
    venv_bin = Path(sys.executable).parent
    (work / ".venv").symlink_to(venv_bin.parent)  # the tour starts with `. .venv/bin/activate`
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOT_", "OPENAI_"))}
    env.update(SPOT_HOME=str(home), PATH=f"{venv_bin}:{env['PATH']}")
    log = tmp_path / "tour.log"
    # Each line is echoed before it runs, so a failure names the README line that broke.
    proc = subprocess.Popen(["bash", "-euxo", "pipefail", "-c", script], cwd=work, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        # Whatever happened, delete the tour's VM while the emulator still runs, then stop the
        # background servers the tour started.
        subprocess.run(["spot", "down", "demo", "--terminate", "--yes"], cwd=work, env=env, capture_output=True, timeout=120)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    output = log.read_text(errors="replace")
    assert code == 0, f"the README tour failed:\n{output[-3000:]}"
    assert "completion_tokens=" in output  # the OpenAI SDK got an answer through the gateway
    assert "cost per million" in output.lower() or "usd" in output.lower()
    for line in script.splitlines():
        command = line.split("  #", 1)[0].strip()
        if command:
            assert shlex.split(command, comments=True)  # every line is a real shell line
