"""A node's address and network: a slot, a network namespace, and a veth pair into it.

Address allocation: slot N (1..16383) is the /30 at ``10.250.0.0 + 4·N``; the host end of the
veth gets ``.+1``, the node ``.+2``. A slot is claimed by creating
``/run/spotinference/real-node/slots/<N>`` (holding the node's directory) under an exclusive
``flock`` of that directory, so parallel nodes — in one process, several test workers or several
emulators on this machine — never share a slot, and a node keeps its slot (so its address)
across power-offs until it is deleted. A claim whose node directory is gone is stale and reused.
``/run`` is cleared at reboot, as are the namespaces and veths the claims describe.

Names (at most 15 characters, the kernel's limit): namespace ``spotnode<N>``, host end
``spnh<N>``; inside, the node's end is renamed ``eth0``. The addresses are set by hand with
``ip`` before the node boots (no systemd-networkd on the host, none needed in the node), and
``systemd-nspawn --network-namespace-path`` boots the node inside that namespace. The node's
default route is the host end, so it reaches the host (and its gateway's port) by that address.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .host import RealNodeError, run

SLOTS_DIR = Path("/run/spotinference/real-node/slots")
BASE = ipaddress.IPv4Address("10.250.0.0")
MAX_SLOT = 16383  # (2**16 / 4) - 1: a /16 of /30s, slot 0 left unused


@dataclass(frozen=True, slots=True)
class Slot:
    number: int

    @property
    def host_address(self) -> str:
        return str(BASE + 4 * self.number + 1)

    @property
    def node_address(self) -> str:
        return str(BASE + 4 * self.number + 2)

    @property
    def namespace(self) -> str:
        return f"spotnode{self.number}"

    @property
    def host_link(self) -> str:
        return f"spnh{self.number}"

    @property
    def namespace_path(self) -> Path:
        return Path("/run/netns") / self.namespace


@contextmanager
def _slots_locked(slots_dir: Path) -> Iterator[None]:
    slots_dir.mkdir(parents=True, exist_ok=True)
    with (slots_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def claim_slot(node_dir: Path, *, slots_dir: Path = SLOTS_DIR, wanted: int | None = None) -> Slot:
    """The slot ``node_dir`` holds; else ``wanted`` when free; else the lowest free one."""
    owner = str(node_dir.resolve())
    with _slots_locked(slots_dir):
        held = _held_by(slots_dir, owner)
        if held is not None:
            return held
        order = ([wanted] if wanted else []) + list(range(1, MAX_SLOT + 1))
        for number in order:
            path = slots_dir / str(number)
            try:
                holder = path.read_text()
            except FileNotFoundError:
                holder = None
            if holder is None or not Path(holder).exists():  # free, or its node was removed unreleased
                path.write_text(owner)
                return Slot(number)
    raise RealNodeError(f"no free real-node address slot: all {MAX_SLOT} in {slots_dir} are taken")


def release_slot(node_dir: Path, *, slots_dir: Path = SLOTS_DIR) -> None:
    """Free the slot ``node_dir`` holds, if any."""
    with _slots_locked(slots_dir):
        held = _held_by(slots_dir, str(node_dir.resolve()))
        if held is not None:
            (slots_dir / str(held.number)).unlink(missing_ok=True)


def _held_by(slots_dir: Path, owner: str) -> Slot | None:
    for path in slots_dir.iterdir():
        if path.name.isdigit():
            try:
                if path.read_text() == owner:
                    return Slot(int(path.name))
            except FileNotFoundError:
                continue
    return None


def bring_up(slot: Slot) -> None:
    """The namespace and the veth pair, addressed; replaces a leftover of the same slot."""
    tear_down(slot)
    ns, host, peer = slot.namespace, slot.host_link, f"spnc{slot.number}"
    what = f"setting up the network of real node slot {slot.number}"
    run(["ip", "netns", "add", ns], what)
    try:
        run(["ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns], what)
        run(["ip", "-n", ns, "link", "set", peer, "name", "eth0"], what)
        run(["ip", "-n", ns, "addr", "add", f"{slot.node_address}/30", "dev", "eth0"], what)
        run(["ip", "-n", ns, "link", "set", "lo", "up"], what)
        run(["ip", "-n", ns, "link", "set", "eth0", "up"], what)
        run(["ip", "-n", ns, "route", "add", "default", "via", slot.host_address], what)
        run(["ip", "addr", "add", f"{slot.host_address}/30", "dev", host], what)
        run(["ip", "link", "set", host, "up"], what)
    except RealNodeError:
        tear_down(slot)
        raise


def tear_down(slot: Slot) -> None:
    """Remove the namespace (its end of the veth goes with it, and so the host end); idempotent."""
    if slot.namespace_path.exists():
        run(["ip", "netns", "del", slot.namespace], f"removing the network of real node slot {slot.number}")
    deadline = time.monotonic() + 5.0
    while link_exists(slot.host_link) and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel removes the host end shortly after the namespace
    if link_exists(slot.host_link):
        run(["ip", "link", "del", slot.host_link], f"removing the veth of real node slot {slot.number}")


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")
