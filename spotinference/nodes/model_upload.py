"""The bootstrap's model upload: a tier's ``model_upload`` directory copied onto the weights volume.

Complete or absent, never half: the files go to ``<model>.spot-partial`` (removed first, so an
interrupted run's leftovers are neither used nor counted), then a marker naming what was uploaded,
then one rename to ``<model>``. A later run finds the marker and uploads nothing; another source
(a file added, changed or removed) uploads again and swaps the new copy in. Before copying, the
volume's free space is compared with what the files need: a full volume fails with one line naming
the device, the mount point and both figures, and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shlex
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .errors import NodeError
from .transport import Transport

MARKER = ".spot-upload"  # inside the uploaded model directory: what was uploaded (a digest)
PARTIAL_SUFFIX = ".spot-partial"
BLOCK = 4096  # ext4's block: a file takes whole blocks


class VolumeFullError(NodeError):
    """The weights volume has no room for the model: the fleet operation failed."""

    exit_code = 7


@dataclass(frozen=True, slots=True)
class LocalFile:
    relative: str
    path: Path
    size: int
    mtime_ns: int


def local_files(source: Path) -> list[LocalFile]:
    if not source.is_dir():
        raise InputError(f"model_upload {source} is not a directory on this machine",
                         hint="point model_upload at the directory holding the model's files")
    found = [LocalFile(str(p.relative_to(source)), p, p.stat().st_size, p.stat().st_mtime_ns)
             for p in sorted(source.rglob("*")) if p.is_file()]
    if not found:
        raise InputError(f"model_upload {source} holds no files: expected the model's files")
    return found


def digest(files: list[LocalFile]) -> str:
    """What an upload is, as its marker records it: names, sizes and times of the files."""
    listing = [[f.relative, f.size, f.mtime_ns] for f in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def needed_bytes(files: list[LocalFile]) -> int:
    return sum(-(-f.size // BLOCK) * BLOCK for f in files) + BLOCK  # + the marker


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class ModelUpload:
    def __init__(self, transport: Transport, *, source: Path, target: str, weights_dir: str, device: str,
                 as_root: bool, progress=lambda message: None) -> None:  # noqa: ANN001
        self.transport, self.source, self.target = transport, source.expanduser(), target
        # A real VM's volume is root's (the SSH user writes only what it chowns); an emulated node's is ours.
        self.sudo = "sudo " if as_root else ""
        self.weights_dir, self.device, self._progress = weights_dir, device, progress

    def run(self) -> bool:
        """Whether the model was uploaded (else it was there already)."""
        files = local_files(self.source)
        wanted = digest(files)
        q, run = shlex.quote, self.transport.run
        target, partial = self.target, self.target + PARTIAL_SUFFIX
        marker = posixpath.join(target, MARKER)
        if run(f"cat {q(marker)}", check=False).stdout.strip() == wanted:
            return False
        if run(f"test -e {q(target)} && ! test -e {q(marker)}", check=False).ok:
            raise NodeError(f"node {self.transport.node}: {target} exists and spot did not upload it: "
                            f"not replaced with model_upload {self.source}", node=self.transport.node,
                            hint="remove it on the node, or drop model_upload from the tier")
        # Leftovers of an interrupted upload: never used, and their space is freed before measuring.
        sudo = self.sudo
        run(f"{sudo}rm -rf {q(partial)} && {sudo}mkdir -p {q(partial)} && {sudo}chown \"$(id -u)\" {q(partial)}")
        need = needed_bytes(files)
        free = self._free_bytes()
        if need > free:
            run(f"{sudo}rm -rf {q(partial)}")
            raise self._full(need, free)
        self._progress(f"uploading the model ({mib(need)}) to {target}")
        try:
            for item in files:
                self.transport.put_local_file(posixpath.join(partial, item.relative), item.path)
            self.transport.put_file(posixpath.join(partial, MARKER), (wanted + "\n").encode())
        except NodeError:
            run(f"{sudo}rm -rf {q(partial)}", check=False)
            free = self._free_bytes()
            if need > free:  # the volume filled meanwhile
                raise self._full(need, free) from None
            raise
        # The rename is the commit: before it, <model> is the old complete copy (or nothing).
        old = target + ".spot-old"
        run(f"{sudo}rm -rf {q(old)} && {{ ! test -e {q(target)} || {sudo}mv {q(target)} {q(old)}; }} "
            f"&& {sudo}mv {q(partial)} {q(target)} && {sudo}rm -rf {q(old)}")
        return True

    def _free_bytes(self) -> int:
        out = self.transport.run(f"df -P -B1 {shlex.quote(self.weights_dir)}").stdout.splitlines()
        return int(out[-1].split()[3])

    def _full(self, need: int, free: int) -> VolumeFullError:
        node = self.transport.node
        return VolumeFullError(
            f"node {node}: weights volume {self.device} at {self.weights_dir} is full: uploading the model to "
            f"{self.target} needs {mib(need)}, {mib(free)} free",
            node=node, hint="free space on the volume (or a larger weights_volume_gb) and run the command again",
        )
