"""The bookworm root every real node starts from, built once per machine and cached.

``debootstrap --variant=minbase`` with the packages below (~1 min here, ~280 MB) into
``<user cache>/spotinference/real-node/bookworm-<hash of the package list>``: a changed package
list is a new image, never a stale one. Parallel builders (test workers, several emulators) take
an exclusive ``flock`` on ``<image>.lock``; the first builds, the others wait and find it done.
The build goes into ``<image>.building-<pid>`` and is renamed into place only when complete, so
a half-built image (a build killed or failed) is never used: its leftover is removed by the next
builder.

The image is read-only from then on: it is the lower layer of every node's overlay. It carries
no SSH host keys and an empty machine-id, so each node gets its own (see ``node``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from .host import RealNodeError, check_host, run
from .mounts import unmount_all

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
#: what a cloud GPU image has that spot's bootstrap relies on (sshd, sudo, python3 -m venv, mkfs, ip)
#: and libnuma1, which vLLM's CPU build links (its _C extension fails to load without it)
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "sudo", "python3", "python3-venv",
    "iproute2", "e2fsprogs", "ca-certificates", "procps", "curl", "libnuma1",
)
BUILD_TIMEOUT_S = 1800.0
MARKER = "etc/spot-real-node-image.json"


@dataclass(frozen=True, slots=True)
class Image:
    root: Path
    built_in_s: float | None  # None: found in the cache


def cache_dir() -> Path:
    return platformdirs.user_cache_path("spotinference") / "real-node"


def image_name(packages: tuple[str, ...] = PACKAGES, suite: str = SUITE) -> str:
    digest = hashlib.sha256(" ".join([suite, *sorted(packages)]).encode()).hexdigest()[:12]
    return f"{suite}-{digest}"


def cached_image(packages: tuple[str, ...] = PACKAGES, *, cache: Path | None = None) -> Path | None:
    """The complete cached image's root, or None when it must be built."""
    root = (cache or cache_dir()) / image_name(packages)
    return root if (root / MARKER).is_file() else None


def ensure_image(packages: tuple[str, ...] = PACKAGES, *, cache: Path | None = None, mirror: str = MIRROR) -> Image:
    """The cached image's root, building it first if no complete one exists."""
    check_host()
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / image_name(packages)
    if (root / MARKER).is_file():
        return Image(root, None)
    with (cache / f"{root.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel builders wait here for the first
        if (root / MARKER).is_file():
            return Image(root, None)
        for stale in cache.glob(f"{root.name}.building-*"):
            _remove(stale)  # a build killed half-way: never used
        started = time.monotonic()
        building = cache / f"{root.name}.building-{os.getpid()}"
        try:
            _debootstrap(building, packages, mirror)
            _generalize(building, packages)
            if root.exists():  # an image without its marker: a half-built one from before renames
                shutil.rmtree(root)
            os.rename(building, root)
        finally:
            if building.exists():
                _remove(building)
        return Image(root, time.monotonic() - started)


def _remove(tree: Path) -> None:
    unmount_all(tree)  # debootstrap mounts /proc and /sys in its target while it runs
    shutil.rmtree(tree, ignore_errors=True)


def _debootstrap(target: Path, packages: tuple[str, ...], mirror: str) -> None:
    run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(target), mirror],
        f"building the {SUITE} image with debootstrap", timeout=BUILD_TIMEOUT_S)


def _generalize(root: Path, packages: tuple[str, ...]) -> None:
    """Remove what must differ per node, and what a container must not start."""
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc" / "machine-id").write_text("")
    (root / "var" / "lib" / "dbus" / "machine-id").unlink(missing_ok=True)
    (root / "etc" / "hostname").unlink(missing_ok=True)
    shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    (root / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text(json.dumps({"suite": SUITE, "packages": sorted(packages)}) + "\n")
    if not (root / "usr" / "bin" / "sudo").exists():
        raise RealNodeError(f"the {SUITE} image was built without sudo: debootstrap ignored --include")
