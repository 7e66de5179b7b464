"""The bootstrap: make a node run its tier's engine, over any Transport, idempotently.

Steps, each a no-op when already done: prepare directories (and, on a real VM, mount the weights
volume), install vLLM at the tier's pinned version (unless the tier names its own ``vllm.executable``
or ``vllm.command``, which is only checked), write the engine's files, enable and
(re)start the engine. Running it twice changes nothing and restarts nothing; a changed plan
(another model, port or vLLM version) rewrites the files and restarts the engine once.
Waiting for ``/health`` is the fleet's job (over HTTP, from where the gateway runs).
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from .engine_unit import UNIT_NAME, EnginePlan
from .errors import NodeError
from .transport import Transport

INSTALL_TIMEOUT_S = 1800.0  # pip install vllm: minutes on a fresh VM

# Finds the attached volume (the one disk that is neither the root disk nor mounted), formats it
# only when it has no filesystem, and mounts it by UUID so a reboot or restore keeps it.
_MOUNT_WEIGHTS = r"""
set -e
target={target}
if mountpoint -q "$target"; then exit 0; fi
root_disk=$(lsblk -no PKNAME "$(findmnt -no SOURCE /)" 2>/dev/null || true)
dev=""
for d in $(lsblk -dno NAME,TYPE | awk '$2=="disk"{{print $1}}'); do
  [ "$d" = "$root_disk" ] && continue
  if [ -z "$(lsblk -no MOUNTPOINT "/dev/$d" | tr -d '[:space:]')" ]; then dev="/dev/$d"; fi
done
[ -n "$dev" ] || {{ echo "no unmounted data disk found for the weights volume" >&2; exit 3; }}
blkid "$dev" >/dev/null 2>&1 || mkfs.ext4 -q -L spot-weights "$dev"
mkdir -p "$target"
uuid=$(blkid -s UUID -o value "$dev")
grep -q "$uuid" /etc/fstab || echo "UUID=$uuid $target ext4 defaults,nofail 0 2" >> /etc/fstab
mount "$target"
"""


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
        self._install(result)
        files_changed = self._write_files(result)
        self._start(result, restart=files_changed)
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
                self._progress("mounting the weights volume")
                self.transport.run(f"sudo sh -c {shlex.quote(_MOUNT_WEIGHTS.format(target=shlex.quote(layout.weights_dir)))}")
                result.changed.append("mounted the weights volume")

    def _install(self, result: BootstrapResult) -> None:
        tier = self.plan.tier
        if tier.engine == "sim":
            return
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
            return
        if tier.vllm.executable:
            found = self.transport.run(f"test -x {shlex.quote(tier.vllm.executable)}", check=False)
            if not found.ok:
                raise NodeError(
                    f"vllm.executable {tier.vllm.executable!r} is not an executable on node {self.transport.node}",
                    node=self.transport.node,
                    hint="install vLLM there or remove vllm.executable so the bootstrap installs it",
                )
            return
        venv = shlex.quote(self.layout.venv)
        wanted = tier.vllm.version
        probe = self.transport.run(
            f"{venv}/bin/python -c 'import importlib.metadata as m; print(m.version(\"vllm\"))'", check=False
        )
        if probe.ok and probe.stdout.strip() == wanted:
            return
        self._progress(f"installing vLLM {wanted} (takes minutes on a fresh node)")
        self.transport.run(
            f"sudo mkdir -p {venv} && sudo chown \"$(id -u)\" {venv} && python3 -m venv {venv} && "
            f"{venv}/bin/pip install --quiet --upgrade pip && {venv}/bin/pip install --quiet {shlex.quote('vllm==' + wanted)}",
            timeout_s=INSTALL_TIMEOUT_S,
        )
        result.changed.append(f"installed vLLM {wanted}")

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
