"""Noticing an engine unit that fails while the fleet waits for its /health.

A bad vLLM argument or a missing model makes vLLM exit at start; systemd's Restart=on-failure
starts it again every RestartSec, for ever. /health never answers, so without this the fleet
would wait out its whole deadline (an hour for `spot up`). systemd knows sooner: the unit's
restart counter grows, or the unit is failed or dead. What systemd says, and the gist of the
engine's last journal lines, make the one line the operator sees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .engine_unit import UNIT_NAME
from .errors import NodeError
from .transport import Transport

#: restarts seen while waiting (beyond those before the wait began) that make a crash loop: one
#: restart is a killed engine coming back (the SIGKILL drill); two without /health is a loop.
CRASH_LOOP_RESTARTS = 2
GIST_LINES = 2
GIST_LINE_CHARS = 200
_ERRORISH = re.compile(r"error|exception|no such file|not found|denied|invalid|fatal|killed", re.I)


class EngineUnitFailedError(NodeError):
    """The engine unit crash-loops or stopped: the fleet operation failed, the node is left as it is."""

    exit_code = 7


@dataclass(frozen=True, slots=True)
class UnitState:
    active: str  # ActiveState: active, activating, failed, inactive, ...
    sub: str  # SubState: running, auto-restart, start-pre, dead, failed, ...
    restarts: int  # NRestarts: automatic restarts since the unit was last started by hand
    result: str  # Result: success, exit-code, signal, core-dump, start-limit-hit, ...

    @classmethod
    def parse(cls, text: str) -> UnitState:
        values = dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)
        restarts = values.get("NRestarts", "0").strip()
        return cls(active=values.get("ActiveState", "").strip(), sub=values.get("SubState", "").strip(),
                   restarts=int(restarts) if restarts.isdigit() else 0, result=values.get("Result", "").strip())

    @property
    def stopped(self) -> bool:
        """Not running and not going to be: systemd gave up, or the engine exited cleanly."""
        return self.active in ("failed", "inactive")

    def describe(self) -> str:
        # Result is reset by each start: "success" while a new attempt runs says nothing.
        result = f", last result {self.result}" if self.result not in ("", "success") else ""
        return f"{self.restarts} restart{'s' if self.restarts != 1 else ''}, now {self.active}/{self.sub}{result}"


def unit_state(transport: Transport) -> UnitState:
    shown = transport.run(f"systemctl show {UNIT_NAME} -p ActiveState,SubState,NRestarts,Result")
    return UnitState.parse(shown.stdout)


def journal_gist(transport: Transport, *, lines: int = 60) -> str:
    """The engine's own last words (not systemd's lines about it): its last error-looking lines,
    else its last line; '(nothing in the journal)' when it said nothing."""
    # _SYSTEMD_UNIT= is what the unit's processes wrote; -u would add systemd's own messages.
    out = transport.run(f"sudo journalctl _SYSTEMD_UNIT={UNIT_NAME}.service -o cat --no-pager -n {lines}",
                        check=False).stdout
    # argparse's usage block ("usage: ...", then "  [--flag ...]" lines) is noise beside its error line.
    said = [line.strip() for line in out.splitlines() if line.strip() and not line.strip().startswith(("usage:", "["))]
    if not said:
        return "(nothing in the journal)"
    errors = [line for line in said if _ERRORISH.search(line)]
    picked = list(dict.fromkeys(reversed(errors or said[-1:])))[:GIST_LINES]
    return " | ".join(_clip(line) for line in reversed(picked))


def _clip(line: str) -> str:
    return line if len(line) <= GIST_LINE_CHARS else line[: GIST_LINE_CHARS - 3] + "..."


class EngineWatch:
    """Checks the engine unit between /health polls; raises EngineUnitFailedError once it fails.

    The restart count at the first check is the baseline, whoever started the unit: an engine
    killed once last week is no crash loop today, and a `systemctl restart` of a unit that was
    crash-looping keeps its count (seen on a real node: the fixed engine's first check read the
    bad one's 2 restarts)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.baseline: int | None = None

    def check(self) -> UnitState:
        state = unit_state(self.transport)
        if self.baseline is None:
            self.baseline = state.restarts
        crash_loop = state.restarts - min(self.baseline, state.restarts) >= CRASH_LOOP_RESTARTS
        if state.stopped or crash_loop:
            node = self.transport.node
            what = "crash-looping" if crash_loop and not state.stopped else "stopped"
            raise EngineUnitFailedError(
                f"node {node}: the engine unit {UNIT_NAME} is {what} (systemd: {state.describe()}); "
                f"its last words: {journal_gist(self.transport)}",
                node=node,
                hint=f"the node is left as it is: `spot logs {node}` shows the journal; fix the tier and run the command again",
            )
        return state
