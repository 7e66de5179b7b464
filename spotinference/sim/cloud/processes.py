"""The processes of emulated nodes: boot scripts started when a VM comes up, killed when it stops.

Each VM is a directory, ``{state_dir}/nodes/{id}/`` (its ``node_dir``), with ``boot/``, ``run/``,
``log/`` and ``ephemeral/`` created by the emulator. The contract with whatever sets a node up
(spot's bootstrap writes its engine's boot script there through the local transport):

* Boot. Whenever the VM becomes ACTIVE (after create, restore or start), the emulator runs every
  ``{node_dir}/boot/*.sh``, sorted by name, as ``/bin/sh <script>``, each detached in its own
  session (its own process group, whose id is the script's pid), with cwd = node_dir, the
  emulator's environment plus ``NODE_DIR=<node_dir>``, stdin from /dev/null and stdout+stderr
  appended to ``{node_dir}/log/boot-<stem>.log`` — as systemd starts the enabled units at boot.
  A VM that is already ACTIVE when the emulator (re)starts is not booted again: its processes
  outlive the emulator.
* Kill. Whenever the VM stops running (hibernate begins, stop, delete, a reclaim to ERROR or to
  nothing), the emulator reads every ``{node_dir}/run/*.pid`` (one pid per file) and sends
  SIGTERM to the process group each pid leads (so start engines with setsid / a new session),
  or to the pid alone when it leads no group; then SIGKILL 5 s later to whatever is still
  alive. Stale pids are ignored; the pid files are removed. The process groups of the boot
  scripts this emulator run started (everything a boot script started without a new session)
  are killed the same way, whether or not the script is still running.
* Hibernate also empties ``{node_dir}/ephemeral/`` (the ephemeral disk is lost); the rest of the
  directory (root disk) stays. When a delete completes, the whole node directory is removed.

The emulator never starts an engine itself. Its own children are reaped by ``poll()``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .lifecycle import NODE_SUBDIRS, Effect

log = logging.getLogger(__name__)

KILL_GRACE_S = 5.0


@dataclass
class NodeProcesses:
    """Applies a cloud's effects to the machine; ``poll()`` it often (SIGKILLs, reaping)."""

    grace_s: float = KILL_GRACE_S
    _boots: dict[str, list[subprocess.Popen[bytes]]] = field(default_factory=dict)
    _to_kill: list[tuple[tuple[bool, int], float]] = field(default_factory=list)  # (target, SIGKILL at)

    def apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            node = Path(effect.node_dir)
            try:
                if effect.kind == "boot":
                    self.boot(node)
                elif effect.kind == "kill":
                    self.kill(node)
                elif effect.kind == "wipe_ephemeral":
                    wipe(node / "ephemeral")
                elif effect.kind == "remove_node":
                    self.kill(node)
                    shutil.rmtree(node, ignore_errors=True)
            except OSError as exc:  # a node directory a user broke must not stop the emulator
                log.warning("node %s: %s failed: %s", effect.vm_id, effect.kind, exc)

    @staticmethod
    def prepare(node: Path) -> None:
        for sub in NODE_SUBDIRS:
            (node / sub).mkdir(parents=True, exist_ok=True)

    def boot(self, node: Path) -> None:
        self.prepare(node)
        env = {**os.environ, "NODE_DIR": str(node)}
        started = self._boots.setdefault(str(node), [])
        for script in sorted((node / "boot").glob("*.sh")):
            with (node / "log" / f"boot-{script.stem}.log").open("ab") as log:
                started.append(subprocess.Popen(
                    ["/bin/sh", str(script)], cwd=node, env=env, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                ))

    def kill(self, node: Path) -> None:
        targets: set[tuple[bool, int]] = {(True, proc.pid) for proc in self._boots.pop(str(node), [])}
        run = node / "run"
        for pid_file in sorted(run.glob("*.pid")) if run.is_dir() else []:
            target = _target_of(pid_file)
            if target is not None:
                targets.add(target)
            pid_file.unlink(missing_ok=True)
        protected = {os.getpgrp(), os.getpid(), 0, 1}
        deadline = time.monotonic() + self.grace_s
        for target in targets:
            if target[1] not in protected and _signal(target, signal.SIGTERM):
                self._to_kill.append((target, deadline))

    def poll(self) -> None:
        """SIGKILL what outlived its grace; reap the boot scripts that have exited."""
        now = time.monotonic()
        due = [t for t, at in self._to_kill if at <= now]
        self._to_kill = [(t, at) for t, at in self._to_kill if at > now]
        for target in due:
            _signal(target, signal.SIGKILL)
        for procs in self._boots.values():
            for proc in procs:
                proc.poll()


def _target_of(pid_file: Path) -> tuple[bool, int] | None:
    """``(True, pgid)`` for a pid leading its process group, ``(False, pid)`` otherwise, None if stale."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 1:
        return None
    try:
        return (True, pid) if os.getpgid(pid) == pid else (False, pid)
    except (ProcessLookupError, PermissionError):
        return None  # stale


def _signal(target: tuple[bool, int], sig: signal.Signals) -> bool:
    is_group, ident = target
    try:
        if is_group:
            os.killpg(ident, sig)
        else:
            os.kill(ident, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def wipe(directory: Path) -> None:
    """Empty a directory, keeping the directory itself."""
    if not directory.is_dir():
        return
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
