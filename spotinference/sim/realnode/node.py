"""One real node: a Debian bookworm booted by systemd in a container, as a cloud VM boots.

A node lives in one directory::

    node.json    what it is: user, public key, hostname, volume size, address slot, image
    upper/ work/ its own changes to the shared image (the overlay's upper and work layers)
    root/        the overlay mount of the image and upper/ (mounted only while it runs)
    volume.img   the weights volume (sparse; a loop device inside as /dev/vdb while it runs)
    nspawn.pid   the systemd-nspawn process while it runs; console.log its console

Root: an overlay (``upper/`` on the read-only cached image). Measured on this kind of machine
(kernel 6.18, ext4): overlayfs works, mounting takes milliseconds and a node costs only what it
writes; ``cp --reflink=auto -a`` of the ~280 MB image is a full copy on ext4 (no reflinks):
1.2 s with a warm page cache and 280 MB per node. Power-off keeps ``upper/`` (so a file written on
the root survives it).

Boot: the network namespace and veth (``network``), the overlay, the volume's loop device, then
``systemd-nspawn -b --register=no --keep-unit`` in that namespace (no systemd-machined on these
hosts, so it registers nowhere; it runs detached in its own session, so it outlives the process
that started it, like a VM outlives its API call). Its machine name is its slot's
(``spotnode<N>``, unique on the host, as nspawn's runtime directories need); its hostname the
spec's, which two nodes may share. Booted = its sshd answers at its address.
Power-off: SIGTERM to nspawn, which asks the node's systemd for a clean poweroff; then the
overlay is unmounted, the loop device detached and the namespace (with its veth) removed, so a
powered-off node holds nothing but its files. Delete: power-off, the address slot released, the
directory removed. ``with RealNode.create(...) as node:`` deletes it however the block ends.

First boot is a fresh cloud VM's: the user (passwordless sudo, as cloud images have, password
login impossible) with the given key in ``authorized_keys``, the node's own SSH host keys and
machine-id, written into ``upper/`` before it first boots; the volume is unformatted.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from . import network, volume
from .host import RealNodeError, check_host, last_line, run
from .image import ensure_image
from .mounts import mount_overlay, mounts_under, unmount_all

GiB = 1024**3
SSH_PORT = 22
BOOT_TIMEOUT_S = 180.0
POWEROFF_TIMEOUT_S = 90.0
VOLUME_DEVICE = "/dev/vdb"  # the name Hyperstack's attached volumes get
NSPAWN_REBOOT = 133  # systemd-nspawn's exit status when the node's systemd rebooted
NSPAWN_NOISE = "/run/systemd/nspawn/propagate"  # "Attempted to remove disk file system under ..."


@dataclass(frozen=True, slots=True)
class RealNodeSpec:
    public_key: str  # an OpenSSH public key line
    user: str = "ubuntu"  # Hyperstack's Ubuntu images' user, spot's default
    hostname: str = "spot-node"
    volume_bytes: int = 2 * GiB


class RealNode:
    def __init__(self, path: Path, spec: RealNodeSpec, image_root: Path, slot: network.Slot) -> None:
        self.path = path
        self.spec = spec
        self.image_root = image_root
        self.slot = slot

    # -- making and finding ----------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, spec: RealNodeSpec, *, image_root: Path | None = None) -> RealNode:
        """Make a node in ``path`` (new or empty), ready to boot; its image is built first if need be."""
        check_host()
        path = path.resolve()
        if (path / "node.json").exists():
            raise RealNodeError(f"{path} already holds a real node")
        image_root = image_root or ensure_image().root
        path.mkdir(parents=True, exist_ok=True)
        node = cls(path, spec, image_root, network.claim_slot(path))
        try:
            node._save()
            volume.ensure_file(node.volume_file, spec.volume_bytes)
            node._first_boot_files()
        except BaseException:
            node.delete()
            raise
        return node

    @classmethod
    def open(cls, path: Path) -> RealNode:
        path = path.resolve()
        try:
            data = json.loads((path / "node.json").read_text())
        except FileNotFoundError as exc:
            raise RealNodeError(f"{path} holds no real node") from exc
        return cls(path, RealNodeSpec(**data["spec"]), Path(data["image_root"]), network.Slot(data["slot"]))

    def _save(self) -> None:
        body = {"spec": asdict(self.spec), "image_root": str(self.image_root), "slot": self.slot.number}
        tmp = self.path / "node.json.tmp"
        tmp.write_text(json.dumps(body, indent=1) + "\n")
        os.replace(tmp, self.path / "node.json")

    # -- where things are ------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return self.slot.node_address

    @property
    def host_address(self) -> str:
        """The host's end of the veth: what the node reaches this machine at."""
        return self.slot.host_address

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def volume_file(self) -> Path:
        return self.path / "volume.img"

    @property
    def _pid_file(self) -> Path:
        return self.path / "nspawn.pid"

    # -- first boot ------------------------------------------------------------------------------

    def _first_boot_files(self) -> None:
        """What cloud-init does on a fresh VM: the user, its key, sudo, host keys, machine-id."""
        spec, root = self.spec, self.root
        mount_overlay(self.image_root, self.path / "upper", self.path / "work", root)
        try:
            what = f"preparing the node in {self.path}"
            run(["chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo",
                 spec.user], what)
            run(["chroot", str(root), "usermod", "--password", "*", spec.user], what)  # no password login
            run(["chroot", str(root), "ssh-keygen", "-A"], what)  # this node's own host keys
            sudoers = root / "etc" / "sudoers.d" / "90-cloud-user"
            sudoers.write_text(f"{spec.user} ALL=(ALL) NOPASSWD:ALL\n")
            sudoers.chmod(0o440)
            ssh_dir = root / "home" / spec.user / ".ssh"
            ssh_dir.mkdir(mode=0o700)
            (ssh_dir / "authorized_keys").write_text(spec.public_key.strip() + "\n")
            (ssh_dir / "authorized_keys").chmod(0o600)
            owner = run(["chroot", str(root), "id", "-u", spec.user], what).strip()
            for item in (ssh_dir, ssh_dir / "authorized_keys"):
                os.chown(item, int(owner), int(owner))
            (root / "etc" / "hostname").write_text(spec.hostname + "\n")
            (root / "etc" / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {spec.hostname}\n"
                                                "::1 localhost ip6-localhost ip6-loopback\n")
            (root / "etc" / "machine-id").write_text(secrets.token_hex(16) + "\n")
        finally:
            unmount_all(root)

    # -- power -----------------------------------------------------------------------------------

    def is_running(self) -> bool:
        pid = self._pid()
        return pid is not None and _alive(pid)

    def boot(self, *, wait: bool = True, timeout_s: float = BOOT_TIMEOUT_S) -> None:
        """Power on (nothing if it runs); with ``wait``, return once its sshd answers.

        A boot that fails (nspawn stops, or sshd never answers) leaves the node powered off,
        holding nothing on the host, and raises RealNodeError with the console's last line.
        """
        if not self.is_running():
            self._start()
        if wait:
            try:
                self.wait_booted(timeout_s)
            except RealNodeError:
                self.poweroff()
                raise

    def _start(self) -> None:
        check_host()
        self._release_machine()  # leftovers of a run that was killed, not powered off
        self.slot = network.claim_slot(self.path, wanted=self.slot.number)
        self._save()
        try:
            network.bring_up(self.slot)
            mount_overlay(self.image_root, self.path / "upper", self.path / "work", self.root)
            loop = volume.attach(self.volume_file)
            argv = ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
                    f"--directory={self.root}", f"--machine={self.slot.namespace}", f"--hostname={self.spec.hostname}",
                    f"--network-namespace-path={self.slot.namespace_path}",
                    f"--bind={loop}:{VOLUME_DEVICE}", f"--bind={loop}", "--console=read-only"]
            with (self.path / "console.log").open("ab") as console:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            _children[proc.pid] = proc
            self._pid_file.write_text(f"{proc.pid}\n")
            threading.Thread(target=self._follow_reboot, args=(proc,), daemon=True).start()
        except BaseException:
            self._release_machine()
            raise

    def _follow_reboot(self, proc: subprocess.Popen[bytes]) -> None:
        """A reboot from inside (`systemctl reboot`) ends nspawn with 133: boot again, as a VM does.
        A poweroff (ours or the node's own) ends it otherwise and leaves it off."""
        if proc.wait() == NSPAWN_REBOOT and self._pid() == proc.pid:
            try:
                self._start()
            except RealNodeError:
                pass  # left powered off, as a VM whose boot failed; is_running() says so

    def wait_booted(self, timeout_s: float = BOOT_TIMEOUT_S) -> None:
        """Until the node's sshd sends its banner; RealNodeError if it stops or the time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.is_running():
                raise RealNodeError(f"the node in {self.path} stopped while booting: {self._console_tail()}")
            if _ssh_banner(self.address):
                return
            if time.monotonic() > deadline:
                raise RealNodeError(f"the node in {self.path} did not answer on {self.address}:{SSH_PORT} "
                                    f"within {timeout_s:g} s: {self._console_tail()}")
            time.sleep(0.2)

    def poweroff(self, *, timeout_s: float = POWEROFF_TIMEOUT_S) -> None:
        """A clean shutdown (systemd stops its units), waiting until it is down; then free its devices."""
        pid = self._pid()
        if pid is not None and _alive(pid):
            _signal(pid, signal.SIGTERM)  # nspawn turns it into SIGRTMIN+3: systemd's clean halt
            deadline = time.monotonic() + timeout_s
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                _signal(pid, signal.SIGKILL)
                while _alive(pid):
                    time.sleep(0.05)
        self._release_machine()

    def _release_machine(self) -> None:
        """Everything a run holds on the host, released; idempotent."""
        unmount_all(self.root)
        volume.detach(self.volume_file)
        network.tear_down(self.slot)
        self._pid_file.unlink(missing_ok=True)

    def delete(self) -> None:
        """Power off and remove everything: devices, veth, address slot, files."""
        try:
            self.poweroff()
        finally:
            network.release_slot(self.path)
            if not mounts_under(self.path):  # never rmtree through a mount
                shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> RealNode:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.delete()

    # -- inside ----------------------------------------------------------------------------------

    def leader_pid(self) -> int:
        """The node's PID 1 (systemd) as the host sees it: nspawn's child."""
        pid = self._pid()
        if pid is None or not _alive(pid):
            raise RealNodeError(f"the node in {self.path} is not running")
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if not children:
            raise RealNodeError(f"the node in {self.path} has no init process yet")
        return int(children[0])

    def run_inside(self, command: list[str], *, timeout_s: float = 60) -> str:
        """Run a command as root inside the running node (``nsenter``, no sshd needed)."""
        return run(["nsenter", "-t", str(self.leader_pid()), "-a", *command],
                   f"running {command[0]} in the node", timeout=timeout_s)

    def _pid(self) -> int | None:
        try:
            return int(self._pid_file.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def _console_tail(self) -> str:
        """The console's last line that says something (not nspawn's harmless parting warning)."""
        try:
            text = (self.path / "console.log").read_text(errors="replace")[-8000:]
        except FileNotFoundError:
            return "(no console output)"
        return last_line("\n".join(line for line in text.splitlines() if NSPAWN_NOISE not in line))


#: nspawn processes this process started, so it can reap them (no zombies counted as alive)
_children: dict[int, subprocess.Popen[bytes]] = {}


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _children[pid]
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and b"systemd-nspawn" in cmdline  # a reused pid is not our node


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # it ended meanwhile


def _ssh_banner(address: str) -> bool:
    try:
        with socket.create_connection((address, SSH_PORT), timeout=1.0) as sock:
            sock.settimeout(2.0)
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False

