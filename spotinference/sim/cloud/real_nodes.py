"""Real nodes for the emulator's VMs (``spot sim cloud --real-nodes``), in place of node directories.

The same effects as ``processes`` (the contract the emulated VMs follow), acted on a real node
(``spotinference.sim.realnode``) in the VM's ``node_dir``:

* boot (the VM became ACTIVE: created, restored, started): the first time, make the node — its
  user ``ubuntu`` (passwordless sudo) with the key pair the VM was created with, its own host
  keys, an unformatted volume; then boot it (systemd-nspawn) and wait for its sshd.
* kill (hibernate, stop, delete, reclaim): a clean poweroff, keeping its root and volume.
* remove_node (delete done, vanished): the node removed, with its devices, veth and address.
* wipe_ephemeral: nothing (a real node has no ephemeral disk here).

The VM's address (``fixed_ip``, and ``floating_ip`` once attached) is the node's veth address,
claimed when the VM is created (``address_for``) and kept until it is deleted.

Booting and powering off take seconds, so they run on one worker thread, in the order the
effects came (a restore's boot always follows the hibernate's poweroff), and the API keeps
answering meanwhile. A step that fails is logged as one line; the VM's status is the emulator's,
as a real cloud's VM is ACTIVE even when its OS failed to boot. Statuses move on the emulator's
clock and the node follows: a VM can read ACTIVE a moment before its sshd answers (as on a real
cloud) and HIBERNATED a moment before its node is down. ``close()`` waits for the queue.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..realnode import RealNode, RealNodeError, RealNodeSpec, network
from .lifecycle import Cloud, Effect

log = logging.getLogger(__name__)

USER = "ubuntu"  # the user of Hyperstack's Ubuntu images, spot's default


def address_for(node_dir: Path) -> str:
    """The address the VM in ``node_dir`` will have (its slot, claimed now, kept until delete)."""
    return network.claim_slot(node_dir).node_address


class RealNodeMachines:
    """Applies a cloud's effects to real nodes; ``poll()`` reports failed steps."""

    def __init__(self, cloud: Cloud, image_root: Path) -> None:
        self.cloud = cloud
        self.image_root = image_root
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="real-node")
        self._jobs: list[tuple[str, Future[None]]] = []

    def apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            node_dir = Path(effect.node_dir)
            if effect.kind == "boot":
                spec = self._spec(effect.vm_id)
                self._submit(f"booting VM {effect.vm_id}", self._boot, node_dir, spec)
            elif effect.kind == "kill":
                self._submit(f"powering off VM {effect.vm_id}", self._poweroff, node_dir)
            elif effect.kind == "remove_node":
                self._submit(f"removing VM {effect.vm_id}", self._remove, node_dir)

    def _spec(self, vm_id: int) -> RealNodeSpec:
        world = self.cloud.world
        vm = world.vms[vm_id]
        keys = [k.public_key for k in world.keypairs.values()
                if k.name == vm.key_name and k.environment == vm.environment]
        # a key pair deleted since the VM was made: the node keeps no key, as a VM keeps its old one
        return RealNodeSpec(public_key=keys[0] if keys else "", user=USER, hostname=hostname(vm.name, vm_id))

    def _submit(self, what: str, job: Callable[..., None], *args: object) -> None:
        self._jobs.append((what, self._worker.submit(job, *args)))

    def _boot(self, node_dir: Path, spec: RealNodeSpec) -> None:
        if (node_dir / "node.json").exists():
            node = RealNode.open(node_dir)
        else:
            node = RealNode.create(node_dir, spec, image_root=self.image_root)
        node.boot()

    @staticmethod
    def _poweroff(node_dir: Path) -> None:
        if (node_dir / "node.json").exists():
            RealNode.open(node_dir).poweroff()

    @staticmethod
    def _remove(node_dir: Path) -> None:
        if (node_dir / "node.json").exists():
            RealNode.open(node_dir).delete()
        else:  # deleted before it ever booted: only its address and directory to free
            network.release_slot(node_dir)
            shutil.rmtree(node_dir, ignore_errors=True)

    def poll(self) -> None:
        running = []
        for what, job in self._jobs:
            if not job.done():
                running.append((what, job))
                continue
            error = job.exception()
            if isinstance(error, RealNodeError):
                log.warning("%s failed: %s", what, error)
            elif error is not None:
                log.error("%s failed", what, exc_info=error)
        self._jobs = running

    def close(self) -> None:
        """Finish the queued steps (a half-made node is never left behind by a stop)."""
        self._worker.shutdown(wait=True)
        self.poll()


def hostname(name: str, vm_id: int) -> str:
    """The VM's name as a hostname (letters, digits, hyphens; at most 63), as clouds set it."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    return cleaned or f"vm-{vm_id}"
