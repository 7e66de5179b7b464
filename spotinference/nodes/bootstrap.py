"""The bootstrap: make a node run its tier's engine, over any Transport, idempotently.

Steps, each a no-op when already done: prepare directories (and, on a real VM, mount the weights
volume), install vLLM at the tier's pinned version (unless the tier names its own ``vllm.executable``
or ``vllm.command``, which is only checked), upload the tier's ``model_upload`` onto the volume
(model_upload.py), write the engine's files, enable and
(re)start the engine. Running it twice changes nothing and restarts nothing; a changed plan
(another model, port or vLLM version) rewrites the files and restarts the engine once.
Waiting for ``/health`` is the fleet's job (over HTTP, from where the gateway runs).
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..config import VllmSettings
from .engine_unit import UNIT_NAME, EnginePlan
from .errors import NodeError
from .model_upload import ModelUpload
from .transport import Transport

INSTALL_TIMEOUT_S = 1800.0  # pip install vllm: minutes on a fresh VM

# Mounts the weights volume: the device the provider attached (the tier's ``weights_device``;
# Hyperstack's VMs see their first volume as /dev/vdb), never a guess among the disks ``lsblk``
# lists (in a container those are the host's too). It formats only an empty device: one with a
# partition table, or a filesystem other than the ext4 labelled spot-weights that this script
# makes, or one mounted or used as swap is refused with one line saying why. Mounted by UUID
# with nofail (a VM whose volume is late still boots), replacing an older line for the target
# (a new volume after the old one was deleted). The engine's unit mounts it again before each
# start (``EnginePlan.unit_text``), so the engine never writes into the bare mount point.
_MOUNT_WEIGHTS = r"""
set -e
target={target}; dev={device}; label={label}
if mountpoint -q "$target"; then exit 0; fi
fail() {{ echo "weights volume $dev: $*" >&2; exit 3; }}
[ -b "$dev" ] || fail "not a block device on this node: is the volume attached? (tier weights_device)"
real=$(readlink -f "$dev")
if findmnt -rn -S "$real" >/dev/null || grep -q "^$real " /proc/swaps; then fail "in use (mounted or swap): spot mounts only a free device"; fi
rc=0; info=$(blkid -p -o export "$dev" 2>/dev/null) || rc=$?
field() {{ printf '%s\n' "$info" | sed -n "s/^$1=//p"; }}
if [ "$rc" = 2 ]; then
  mkfs.ext4 -q -L "$label" "$dev"
elif [ "$rc" != 0 ]; then
  fail "cannot tell what is on it (blkid exited $rc): spot formats only an empty device"
elif [ -n "$(field PTTYPE)" ]; then
  fail "has a $(field PTTYPE) partition table: spot formats only an empty device"
elif [ "$(field TYPE)" != ext4 ] || [ "$(field LABEL)" != "$label" ]; then
  fail "has a $(field TYPE) filesystem labelled '$(field LABEL)' that spot did not make: spot formats only an empty device"
fi
uuid=$(blkid -p -s UUID -o value "$dev")
line="UUID=$uuid $target ext4 defaults,nofail 0 2"
if ! grep -qxF "$line" /etc/fstab; then
  awk -v t="$target" '$2 != t' /etc/fstab > /etc/fstab.spot-new
  echo "$line" >> /etc/fstab.spot-new
  mv /etc/fstab.spot-new /etc/fstab
fi
mkdir -p "$target"
mount "$target"
"""
WEIGHTS_LABEL = "spot-weights"
INSTALL_MARKER = ".spot-installed"  # in the venv, written last: an interrupted install is redone


@dataclass
class BootstrapResult:
    changed: list[str] = field(default_factory=list)  # what this run did, in order
    restarted: bool = False

    @property
    def changed_anything(self) -> bool:
        return bool(self.changed)


Progress = Callable[[str], None]


class Bootstrap:
    def __init__(self, transport: Transport, plan: EnginePlan, *, progress: Progress | None = None) -> None:
        self.transport = transport
        self.plan = plan
        self.layout = plan.layout
        self._progress = progress or (lambda message: None)

    def run(self) -> BootstrapResult:
        result = BootstrapResult()
        self._prepare(result)
        installed = self._install(result)
        uploaded = self._upload_model(result)
        files_changed = self._write_files(result)
        # A new vLLM (or new weights) under an engine that runs the old: restart it once, as for new files.
        self._start(result, restart=files_changed or installed or uploaded)
        return result

    # -- steps -------------------------------------------------------------------------------

    def _prepare(self, result: BootstrapResult) -> None:
        layout = self.layout
        if layout.supervisor == "boot-scripts":
            dirs = " ".join(shlex.quote(layout.path(d)) for d in ("run", "log", "boot", "mnt/weights"))
            self.transport.run(f"mkdir -p {dirs}")
            return
        if self.plan.tier.weights_volume:
            check = self.transport.run(f"mountpoint -q {shlex.quote(layout.weights_dir)}", check=False)
            if not check.ok:
                device = self.plan.tier.weights_device
                self._progress(f"mounting the weights volume ({device})")
                script = _MOUNT_WEIGHTS.format(target=shlex.quote(layout.weights_dir), device=shlex.quote(device),
                                               label=WEIGHTS_LABEL)
                self.transport.run(f"sudo sh -c {shlex.quote(script)}")
                result.changed.append("mounted the weights volume")

    def _install(self, result: BootstrapResult) -> bool:
        """Whether vLLM was (re)installed."""
        tier = self.plan.tier
        if tier.engine == "sim":
            return False
        if tier.vllm.command:
            # The tier starts an engine installed beforehand: check it is there, install nothing.
            program = tier.vllm.command[0]
            probe = f"test -x {shlex.quote(program)}" if "/" in program else f"command -v {shlex.quote(program)}"
            if not self.transport.run(probe, check=False).ok:
                raise NodeError(
                    f"vllm.command starts {program!r}, which is not an executable on node {self.transport.node}",
                    node=self.transport.node,
                    hint="install vLLM there or remove vllm.command so the bootstrap installs it",
                )
            return False
        if tier.vllm.executable:
            found = self.transport.run(f"test -x {shlex.quote(tier.vllm.executable)}", check=False)
            if not found.ok:
                raise NodeError(
                    f"vllm.executable {tier.vllm.executable!r} is not an executable on node {self.transport.node}",
                    node=self.transport.node,
                    hint="install vLLM there or remove vllm.executable so the bootstrap installs it",
                )
            return False
        venv = shlex.quote(self.layout.venv)
        spec = install_spec(tier.vllm)
        marker = f"{venv}/{INSTALL_MARKER}"
        if self.transport.run(f"cat {marker}", check=False).stdout.strip() == spec:
            return False
        source = pip_source_args(tier.vllm)
        sources = [url for url in [tier.vllm.pip_index_url, *tier.vllm.pip_find_links] if url]
        where = f" from {', '.join(sources)}" if sources else ""
        self._progress(f"installing {tier.vllm.package} {tier.vllm.version}{where} (takes minutes on a fresh node)")
        pip = f"{venv}/bin/pip --disable-pip-version-check --no-input"
        steps = [
            f"sudo mkdir -p {venv}", f"sudo chown \"$(id -u)\" {venv}", f"python3 -m venv {venv}",
            f"{pip} {shlex.join(['install', '--quiet', *source, '--upgrade', 'pip'])}",
            f"{pip} {shlex.join(['install', '--quiet', *source, *install_requirements(tier.vllm)])}",
        ]
        if tier.vllm.uninstall:
            steps.append(f"{pip} uninstall --quiet --yes {shlex.join(tier.vllm.uninstall)}")
        steps.append(f"printf '%s\\n' {shlex.quote(spec)} > {marker}")
        self.transport.run(" && ".join(steps), timeout_s=INSTALL_TIMEOUT_S)
        result.changed.append(f"installed {tier.vllm.package} {tier.vllm.version}")
        return True

    def _upload_model(self, result: BootstrapResult) -> bool:
        """Whether the tier's ``model_upload`` was copied onto the volume (else it was there)."""
        tier, layout = self.plan.tier, self.layout
        if tier.model_upload is None:
            return False
        target = layout.path(tier.model.lstrip("/"))
        upload = ModelUpload(self.transport, source=tier.model_upload, target=target, weights_dir=layout.weights_dir,
                             device=tier.weights_device, as_root=layout.supervisor == "systemd",
                             progress=self._progress)
        if not upload.run():
            return False
        result.changed.append(f"uploaded the model to {target}")
        return True

    def _write_files(self, result: BootstrapResult) -> bool:
        changed = False
        for path, (content, mode) in self.plan.files().items():
            if self._file_matches(path, content, mode):
                continue
            self._put(path, content, mode)
            result.changed.append(f"wrote {path}")
            changed = True
        return changed

    def _file_matches(self, path: str, content: bytes, mode: int) -> bool:
        if self.layout.supervisor == "boot-scripts":
            return self.transport.read_file(path) == content
        # Real VMs: the files are root's (the env file is 0600), so compare hashes through sudo.
        quoted = shlex.quote(path)
        probe = self.transport.run(f"sudo sha256sum {quoted} && sudo stat -c %a {quoted}", check=False)
        if not probe.ok:
            return False
        lines = probe.stdout.split()
        return bool(lines) and lines[0] == hashlib.sha256(content).hexdigest() and lines[-1] == f"{mode:o}"

    def _put(self, path: str, content: bytes, mode: int) -> None:
        if self.layout.supervisor == "boot-scripts":
            self.transport.put_file(path, content, mode=mode)
            return
        # The SSH user cannot write under /etc: stage in its home, then install as root.
        staged = f".spot-staged-{hashlib.sha256(path.encode()).hexdigest()[:12]}"
        self.transport.put_file(staged, content, mode=0o600)
        self.transport.run(f"sudo install -D -o root -g root -m {mode:o} {staged} {shlex.quote(path)} && rm -f {staged}")

    def _start(self, result: BootstrapResult, *, restart: bool) -> None:
        if self.layout.supervisor == "systemd":
            self._start_systemd(result, restart=restart)
        else:
            self._start_boot_script(result, restart=restart)

    def _start_systemd(self, result: BootstrapResult, *, restart: bool) -> None:
        run = self.transport.run
        if restart:
            # The unit file was written under the node's /etc by put_file; systemd must re-read it.
            run(f"sudo systemctl daemon-reload && sudo systemctl enable {UNIT_NAME} && sudo systemctl restart {UNIT_NAME}")
            result.restarted = True
            result.changed.append(f"restarted {UNIT_NAME}")
            return
        active = run(f"systemctl is-active --quiet {UNIT_NAME}", check=False)
        if not active.ok:
            run(f"sudo systemctl enable {UNIT_NAME} && sudo systemctl start {UNIT_NAME}")
            result.changed.append(f"started {UNIT_NAME}")

    def _start_boot_script(self, result: BootstrapResult, *, restart: bool) -> None:
        layout = self.layout
        lock = shlex.quote(layout.lock_file)
        running = not self.transport.run(f"flock -n {lock} true", check=False).ok
        if running and not restart:
            return
        if running:
            # The engine leads its own process group (setsid): stop all of it, then start afresh.
            pid_file = shlex.quote(layout.pid_file)
            self.transport.run(
                f'pid=$(cat {pid_file}); kill -TERM -"$pid" 2>/dev/null; '
                f"flock -w 10 {lock} true || kill -KILL -\"$pid\" 2>/dev/null; flock -w 5 {lock} true"
            )
            result.restarted = True
        self.transport.run(f"/bin/sh {shlex.quote(layout.boot_script)}")
        result.changed.append(f"{'restarted' if running else 'started'} {UNIT_NAME}")


def install_requirements(vllm: VllmSettings) -> list[str]:
    """What pip installs: the tier's vLLM wheel at its pinned version, and its extra requirements."""
    return [f"{vllm.package}=={vllm.version}", *vllm.extra_requirements]


def install_spec(vllm: VllmSettings) -> str:
    """What an install is, as its marker records it: another spec means install again. Where the
    wheels came from is not part of it (a mirror serves the same wheels)."""
    return " ".join([*install_requirements(vllm), *(f"-{name}" for name in vllm.uninstall)])


def pip_source_args(vllm: VllmSettings) -> list[str]:
    """pip's options for where the tier's wheels are (nothing: pip's own default, PyPI)."""
    args = ["--no-index"] if vllm.pip_no_index else []
    if vllm.pip_index_url:
        args += ["--index-url", vllm.pip_index_url]
    for link in vllm.pip_find_links:
        args += ["--find-links", link]
    # pip refuses plain-http sources unless trusted; an operator who wrote http:// chose it.
    plain = {urlsplit(url).hostname for url in [vllm.pip_index_url or "", *vllm.pip_find_links] if url.startswith("http://")}
    for host in sorted(h for h in plain if h):
        args += ["--trusted-host", host]
    return args
