"""Mounting and unmounting on the host: a node's overlay root, and leftovers of killed runs."""

from __future__ import annotations

import time
from pathlib import Path

from .host import RealNodeError, run


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first (the order to unmount them in)."""
    prefix = str(path.resolve())
    found = []
    with open("/proc/self/mounts") as table:
        for line in table:
            target = line.split()[1].replace("\\040", " ")
            if target == prefix or target.startswith(prefix + "/"):
                found.append(target)
    return sorted(found, key=len, reverse=True)


def unmount_all(path: Path) -> None:
    """Unmount everything at or below ``path``; a busy mount is retried for a few seconds."""
    for target in mounts_under(path):
        for attempt in range(20):
            try:
                run(["umount", target], f"unmounting {target}")
                break
            except RealNodeError:
                if attempt == 19:
                    raise
                time.sleep(0.25)


def mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    """An overlay of ``upper`` (the node's own changes) on ``lower`` (the shared image) at ``target``."""
    if mounts_under(target):
        return
    for directory in (upper, work, target):
        directory.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", str(target)],
        f"mounting the root of the node in {target.parent}")
