"""What this machine must have to run real nodes, and running its programs with one-line errors."""

from __future__ import annotations

import os
import shutil
import subprocess

from ...errors import SpotError

#: program -> the Debian package that provides it
PROGRAMS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "ip": "iproute2",
    "losetup": "mount",
    "nsenter": "util-linux",
    "mount": "mount",
}


class RealNodeError(SpotError):
    """A real node could not be built, booted, powered off or removed (the message says which step)."""


def check_host() -> None:
    """Raise one line naming what is missing: root, or the programs (and their Debian packages)."""
    if os.geteuid() != 0:
        raise RealNodeError("real nodes need root (debootstrap, systemd-nspawn, loop devices, veth pairs)")
    missing = sorted({pkg for prog, pkg in PROGRAMS.items() if shutil.which(prog) is None})
    if missing:
        raise RealNodeError(f"real nodes need the Debian packages {', '.join(missing)}: "
                            f"apt-get install {' '.join(missing)}")


def run(argv: list[str], what: str, *, timeout: float = 120, input: str | None = None) -> str:
    """Run a host program; its stdout, or RealNodeError with ``what`` and the last stderr line."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    except FileNotFoundError as exc:
        raise RealNodeError(f"{what}: {argv[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise RealNodeError(f"{what}: {argv[0]} took more than {timeout:g} s") from exc
    if done.returncode != 0:
        raise RealNodeError(f"{what}: {' '.join(argv[:3])} exited {done.returncode}: {last_line(done.stderr)}")
    return done.stdout


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"
