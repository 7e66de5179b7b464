"""A real OpenSSH server on loopback for the SSH transport's tests (a pytest plugin).

Installs ``openssh-server`` with apt on first use when it is missing (CI starts from a bare
Debian machine; see ``system_packages``), then runs private ``sshd -D -e`` processes on 127.0.0.1 with their own config,
host key and authorized key in a temporary directory: nothing of the machine's own SSH setup is
read or changed, except the privilege-separation directory /run/sshd that sshd insists on.

Fixtures (session-scoped):
    sshd_binary   the path of sshd, installed if needed
    sshd          a running SshdServer shared by the session (do not restart it)
    sshd_factory  a callable that starts a private SshdServer (for tests that restart or
                  re-key it); every server it made is stopped when the session ends
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.servers import free_port
from tests.system_packages import ensure_program

SSHD = Path("/usr/sbin/sshd")


def ensure_sshd() -> Path:
    """The sshd binary, installing openssh-server with apt when it is missing (root only)."""
    return ensure_program(SSHD, "openssh-server")


def keygen(path: Path, *, passphrase: str = "", comment: str = "spot-test") -> Path:
    """A fresh ed25519 key pair at ``path`` (private) and ``path.pub``."""
    path.unlink(missing_ok=True)
    Path(f"{path}.pub").unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    return path


class SshdServer:
    """One private sshd on 127.0.0.1, allowing key logins as the current user."""

    def __init__(self, sshd: Path, workdir: Path, *, port: int | None = None) -> None:
        self.sshd = sshd
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.user = getpass.getuser()
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.client_key = keygen(self.dir / "client_ed25519")
        self.authorized_keys = self.dir / "authorized_keys"
        self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
        self.config = self.dir / "sshd_config"
        self.log_path = self.dir / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def authorize(self, public_key_path: Path) -> None:
        """Also accept this key (sshd rereads the file at every login)."""
        with self.authorized_keys.open("a") as out:
            out.write(public_key_path.read_text())

    def start(self, *, new_host_key: bool = False, timeout_s: float = 20.0) -> SshdServer:
        if new_host_key or not self.host_key.exists():
            keygen(self.host_key, comment="spot-test-host")
        self._write_config()
        # sshd refuses to start without its privilege-separation directory.
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([str(self.sshd), "-D", "-e", "-f", str(self.config)],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        self._wait_for_banner(timeout_s)
        return self

    def drop_connections(self) -> None:
        """Kill every connection's processes, as a network drop or a node reboot would; the
        listener stays. (Each connection's sshd calls setsid, so killing the listener's process
        group does not reach them.)"""
        if self.proc is None:
            return
        for pid in _descendants(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """Stop the listener and every connection it forked."""
        if self.proc is None:
            return
        self.drop_connections()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def restart(self, *, new_host_key: bool = False) -> SshdServer:
        """Same port; with ``new_host_key`` the server presents a key no client has pinned."""
        self.stop()
        return self.start(new_host_key=new_host_key)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _write_config(self) -> None:
        self.config.write_text("\n".join([
            f"ListenAddress {self.host}",
            f"Port {self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            # The temp dir's modes are not sshd's business here.
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE",
            # Tests open many short connections at once.
            "MaxStartups 100",
            "MaxSessions 100",
            "",
        ]))

    def _wait_for_banner(self, timeout_s: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd gave no banner on port {self.port} in {timeout_s} s: {self.log_tail()}")


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    parents[int(entry.name)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += children
        frontier = children
    return found


@pytest.fixture(scope="session")
def sshd_binary() -> Path:
    return ensure_sshd()


@pytest.fixture(scope="session")
def sshd_factory(sshd_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], SshdServer]]:
    servers: list[SshdServer] = []

    def make() -> SshdServer:
        server = SshdServer(sshd_binary, tmp_path_factory.mktemp("sshd"))
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def sshd(sshd_factory: Callable[[], SshdServer]) -> SshdServer:
    return sshd_factory()
