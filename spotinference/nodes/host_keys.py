"""Host-key pinning for nodes: trust on first use, refuse a changed key.

spot keeps its own known_hosts file (OpenSSH format, so the system ``ssh`` client can use it
too, see ``ssh.ssh_command_argv``). The first connection to a host records the key it presents;
later connections must present the same key, or HostKeyChangedError is raised. Entries are named
as OpenSSH names them: ``host`` on port 22, ``[host]:port`` otherwise.

A node that was rebuilt at the same address has a new key legitimately: the operator forgets
the old one (``forget_host``, or ``ssh-keygen -R``) and the next connection pins the new key.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko

from .errors import HostKeyChangedError


def host_key_name(host: str, port: int) -> str:
    """The name OpenSSH files a host's key under."""
    return host if port == 22 else f"[{host}]:{port}"


class KnownHosts:
    """spot's known_hosts file. Writes happen under a lock and replace the file atomically, so
    concurrent spot processes pinning different nodes do not lose each other's entries."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()

    def load(self) -> paramiko.HostKeys:
        keys = paramiko.HostKeys()
        if self.path.exists():
            keys.load(str(self.path))
        return keys

    def pinned(self, host: str, port: int) -> dict[str, paramiko.PKey]:
        """The pinned keys for host:port by key type (empty when never seen)."""
        found = self.load().lookup(host_key_name(host, port))
        return dict(found) if found is not None else {}

    def pin(self, *, node: str, host: str, port: int, key: paramiko.PKey) -> None:
        """Record ``key`` for host:port. Another process may have pinned it since this one looked:
        the same key is fine, a different one is refused like any changed key."""
        name = host_key_name(host, port)
        with self._locked():
            keys = self.load()
            known = keys.lookup(name)
            if known:
                if key.get_name() in known and known[key.get_name()] == key:
                    return
                pinned = known.get(key.get_name()) or next(iter(known.values()))
                raise host_key_changed(node=node, host=host, port=port, pinned=pinned, presented=key,
                                       known_hosts=self.path)
            keys.add(name, key.get_name(), key)
            self._write(keys)

    def forget(self, host: str, port: int) -> int:
        """Remove every key pinned for host:port (hashed entries too); returns how many."""
        name = host_key_name(host, port)
        with self._locked():
            keys = self.load()
            removed = 0
            while True:
                try:
                    del keys[name]  # one matching entry per call
                except KeyError:
                    break
                removed += 1
            if removed:
                self._write(keys)
            return removed

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # A side file, because the known_hosts file itself is replaced (new inode) on each write.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, keys: paramiko.HostKeys) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            keys.save(tmp)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def forget_host(known_hosts_path: Path, host: str, port: int = 22) -> int:
    """Forget the pinned key(s) of host:port, so the next connection pins whatever it presents.
    Returns the number of entries removed (0 when there was none)."""
    return KnownHosts(known_hosts_path).forget(host, port)


def host_key_changed(*, node: str, host: str, port: int, pinned: paramiko.PKey, presented: paramiko.PKey,
                     known_hosts: Path) -> HostKeyChangedError:
    name = host_key_name(host, port)
    return HostKeyChangedError(
        f"host key of node {node} at {host}:{port} has changed: pinned {pinned.get_name()} {pinned.fingerprint}, "
        f"presented {presented.get_name()} {presented.fingerprint}",
        node=node,
        hint=(f"if node {node} was rebuilt or re-keyed, forget the old key and connect again: "
              f"ssh-keygen -R {shlex.quote(name)} -f {shlex.quote(str(known_hosts))}; "
              "otherwise something may be intercepting the connection"),
    )


class PinOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Called by paramiko only when the host has no pinned key: pin the presented one.
    (Hosts that have one are checked by paramiko itself against the keys we hand it.)"""

    def __init__(self, known_hosts: KnownHosts, *, node: str, host: str, port: int) -> None:
        self.known_hosts = known_hosts
        self.node, self.host, self.port = node, host, port

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        self.known_hosts.pin(node=self.node, host=self.host, port=self.port, key=key)
