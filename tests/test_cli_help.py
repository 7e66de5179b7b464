"""Every `--help` listing says whole sentences, and shell completion works (issue 22, items 7 and 9)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import typer.main

from spotinference_cli.main import app
from tests.conftest import SPOT

# Click's short help (the one line beside a command in `--help`) stops at the first word ending in
# "."; an abbreviation there cuts the sentence, as "Copy spooled rows (e.g." once did.
ABBREVIATIONS = re.compile(r"\b(e\.g|i\.e|etc|vs|cf|approx|incl|no)\.$", re.IGNORECASE)
PAIRS = {"(": ")", "[": "]", "{": "}"}


def every_command() -> list[tuple[str, object]]:
    from typer import _click as click  # Typer 0.29 ships its own click

    found = []

    def walk(command: object, path: str) -> None:
        if not hasattr(command, "list_commands"):
            return
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            found.append((f"{path} {name}", sub))
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "spot")
    return found


def cut_short(short: str) -> str | None:
    """Why this short help reads as a cut sentence, or None."""
    if not short:
        return "no help text"
    if ABBREVIATIONS.search(short):
        return "ends on an abbreviation (Click cut the sentence at its period)"
    for opening, closing in PAIRS.items():
        if short.count(opening) != short.count(closing):
            return f"unbalanced {opening}{closing}"
    if short.count("`") % 2:
        return "unbalanced `"
    if short.endswith("..."):
        return "ends with ..."
    return None


def test_the_walk_finds_every_command_and_subcommand() -> None:
    names = {path for path, _ in every_command()}
    assert {"spot db flush", "spot keys list", "spot cost reconcile", "spot sim cloud", "spot bench compare"} <= names


@pytest.mark.parametrize("path,command", every_command(), ids=lambda v: v if isinstance(v, str) else "")
def test_no_short_help_is_a_cut_sentence(path: str, command: object) -> None:
    short = command.get_short_help_str(limit=10_000)  # the whole first sentence, whatever the terminal's width
    assert cut_short(short) is None, f"{path}: {short!r}: {cut_short(short)}"


def test_db_help_lists_flush_with_its_whole_sentence(spot) -> None:
    result = spot("db", "--help")  # 80 columns
    assert result.returncode == 0
    [line] = [x for x in result.stdout.splitlines() if x.strip().startswith("flush")]
    assert line.split(None, 1)[1] == "Copy spooled rows (the request log) into the database now."


# -- shell completion ---------------------------------------------------------------------------

def in_bash(command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `spot ...` from bash, as a user does: Typer finds the shell among spot's parent processes
    (`; true` keeps bash from exec-ing spot in its own place, which would hide it)."""
    return subprocess.run(["bash", "--norc", "-c", f"{SPOT} {command}; status=$?; true; exit $status"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_show_completion_prints_a_bash_completion_script() -> None:
    result = in_bash("--show-completion", env={"SHELL": "/bin/bash"})
    assert result.returncode == 0, result.stderr
    assert "complete -o default -F _spot_completion spot" in result.stdout
    assert "_SPOT_COMPLETE=complete_bash" in result.stdout


def test_help_offers_completion(spot) -> None:
    result = spot("--help")
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout


def complete(spot, line: str) -> list[str]:
    words = line.split(" ")
    result = spot(env={"_SPOT_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)})
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_completing_a_command_name_offers_the_commands_that_start_so(spot) -> None:
    assert complete(spot, "spot co") == ["config", "cost"]
    assert set(complete(spot, "spot c")) == {"config", "cost", "cron"}
    assert complete(spot, "spot config s") == ["show"]
    assert "list" in complete(spot, "spot keys l")



def test_completion_offers_values(spot) -> None:
    assert complete(spot, "spot cost --by u") == ["utilisation"]
    assert complete(spot, "spot requests --status 5") == ["5xx"]
    assert complete(spot, "spot config show gateway.po") == ["gateway.port"]
    assert complete(spot, "spot config show tiers.") == ["tiers.demo", "tiers.demo-ondemand"]  # the embedded default


def test_install_completion_makes_bash_complete_spot(spot, tmp_path: Path) -> None:
    home = tmp_path / "user"
    home.mkdir()
    installed = in_bash("--install-completion", env={"HOME": str(home), "SHELL": "/bin/bash"})
    assert installed.returncode == 0, installed.stderr
    script = home / ".bash_completions" / "spot.sh"
    assert f"source '{script}'" in (home / ".bashrc").read_text()
    # What bash does on `spot co<TAB>` once the script is sourced, with spot on PATH.
    session = "source ~/.bash_completions/spot.sh; COMP_WORDS=(spot co); COMP_CWORD=1; _spot_completion spot; " \
              'echo "${COMPREPLY[@]}"'
    result = subprocess.run(["bash", "--norc", "-c", session], capture_output=True, text=True, timeout=60,
                            env={"HOME": str(home), "PATH": f"{SPOT.parent}:/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["config", "cost"]
