"""The demo's child processes: each in its own session, stopped with everything it started, and a
sweep that finds any process still tied to a demo's directory (so nothing is ever left behind).

Linux keeps what the sweep needs in /proc; elsewhere the sweep finds nothing and the process
groups are all there is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..child import python_module


def spot_argv(config: Path, *args: str) -> list[str]:
    """`spot --config CONFIG ARGS...` with this very installation of spot."""
    return [*python_module("spotinference_cli.main"), "--config", str(config), *args]


def child_env(home: Path) -> dict[str, str]:
    """This environment without the user's SPOT_* overrides, so the demo's config is the truth."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SPOT_")}
    env["SPOT_HOME"] = str(home)
    return env


@dataclass
class Child:
    """One long-running child (emulator, gateway, sampler), leader of its own process group."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # A new session: a Ctrl-C at the terminal reaches the demo alone, which then stops
            # the children in order (gateway before the VMs it could wake, the emulator last).
            self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def wait_healthy(self, url: str, timeout_s: float = 60.0) -> None:
        from ..errors import SpotError

        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SpotError(f"{self.name} exited with code {self.proc.returncode} while starting: {self.log_tail()}",
                                hint=f"its log is {self.log_path}")
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SpotError(f"{self.name} did not answer {url} within {timeout_s:.0f} s", hint=f"its log is {self.log_path}")

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc is None:
            return
        stop_group(self.proc.pid, grace_s=grace_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _has_live_member(pgid)


def _has_live_member(pgid: int) -> bool:
    """False when every member left is a zombie (dead, waiting to be reaped)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry)
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _stat_fields(entry: Path) -> list[str] | None:
    try:
        return (entry / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def stop_group(pgid: int, *, grace_s: float = 10.0) -> None:
    """SIGTERM a process group, then SIGKILL whatever is still alive after ``grace_s``."""
    if pgid in (0, 1, os.getpgrp()):
        return
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        return
    deadline = time.monotonic() + grace_s
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if group_alive(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)


def processes_of(marker: Path) -> list[int]:
    """Live processes of this user whose command line or environment names ``marker`` (a demo's
    directory): its children name it in ``--config``/``--state-dir`` or in SPOT_HOME, and the
    emulated nodes' engines in HF_HOME (their node directory is inside it)."""
    needle = os.fsencode(str(marker))
    me = os.getpid()
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        fields = _stat_fields(entry)
        if fields is None or fields[0] == "Z":
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + b"\0" + (entry / "environ").read_bytes()
        except OSError:
            continue  # gone, or another user's
        if needle in blob:
            found.append(int(entry.name))
    return found


def sweep(marker: Path, *, grace_s: float = 5.0) -> list[int]:
    """Stop every process still tied to ``marker`` (their whole groups); returns the pids found."""
    pids = processes_of(marker)
    own_group = os.getpgrp()
    for pid in pids:
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            continue
        if pgid == pid and pgid != own_group:
            stop_group(pgid, grace_s=grace_s)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while processes_of(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in processes_of(marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return pids


def cmdline_names(pid: int, marker: Path) -> bool:
    """True when ``pid`` is alive and its command line names ``marker`` (never signal a pid that
    was reused by an unrelated process)."""
    if not Path("/proc").is_dir():
        return group_alive(pid)  # nothing to check the command line with: trust the manifest
    try:
        return os.fsencode(str(marker)) in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
