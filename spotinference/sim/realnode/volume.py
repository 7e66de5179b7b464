"""The weights volume: a sparse file on the host, attached as a loop device while the node runs.

The file is created (unformatted, as a fresh cloud volume is) the first time and kept across
power-offs; each boot attaches it again (``losetup --find``: whatever loop device is free, bound
into the node as ``/dev/vdb``, the name Hyperstack's volumes get, and under its own name too:
without udev in the node, ``mount UUID=...`` finds a device only by probing the names the kernel
lists in /proc/partitions, which is ``loopN``, not ``vdb``); power-off and delete detach
every loop device backed by it (``losetup -j``), so a crashed run's leftovers go too.
"""

from __future__ import annotations

import os
from pathlib import Path

from .host import run


def ensure_file(path: Path, size_bytes: int) -> None:
    if not path.exists():
        with path.open("wb") as handle:
            os.ftruncate(handle.fileno(), size_bytes)  # sparse: no disk used until written


def attach(path: Path) -> str:
    """Attach the file; its loop device (/dev/loopN)."""
    return run(["losetup", "--find", "--show", str(path)], f"attaching the volume {path.name}").strip()


def attached_devices(path: Path) -> list[str]:
    """Every loop device backed by ``path`` (``losetup -j`` prints ``/dev/loopN: [...]: (path)``)."""
    if not path.exists():
        return []
    out = run(["losetup", "-j", str(path)], f"listing the loop devices of {path.name}")
    return [line.split(":", 1)[0] for line in out.splitlines() if line.strip()]


def detach(path: Path) -> None:
    for device in attached_devices(path):
        run(["losetup", "-d", device], f"detaching the volume {path.name} from {device}")
