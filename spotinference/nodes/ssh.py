"""The SSH transport (paramiko), and the argv for the system ``ssh`` client with the same rules.

Where a connection goes, highest precedence first:
  - host:  ``HostName`` from the SSH config for ``target.host`` (an alias), else ``target.host``;
  - port, user:  the target's own value (the provider knows its VM) > the value set explicitly
    in spot's ``[ssh]`` settings > the SSH config > spot's default (22, "ubuntu");
  - key:  ``ssh.key_path`` (with ``ssh.key_passphrase``) > the config's ``IdentityFile``s (plus
    the agent) > the agent and the default ``~/.ssh/id_*`` keys.
The SSH config is ``ssh.config_file`` (default ``~/.ssh/config``; None ignores it). Host keys are
pinned in spot's own known_hosts file (``host_keys``); ``~/.ssh/known_hosts`` is never consulted.

The connection is opened on first use, kept, and reopened once when it has dropped. Commands run
under a small ``/bin/sh`` wrapper (``_RUN``) that puts them in their own process group and kills
that group when the channel closes, so a timeout stops the remote command, not just our wait.
"""

from __future__ import annotations

import errno
import logging
import math
import posixpath
import re
import secrets
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import paramiko

from ..config.models import SshSettings
from ..errors import ConfigError, InputError
from .errors import HostKeyChangedError, NodeError, NodeTimeoutError, NodeUnreachableError
from .host_keys import KnownHosts, PinOnFirstUse, host_key_changed, host_key_name
from .transport import CommandResult, Transport, command_error

T = TypeVar("T")

# paramiko logs a failed handshake with its traceback; with no handler of ours, Python would print
# that on stderr. Our errors say it in one line (NodeUnreachableError), so its log goes nowhere
# unless the application configures logging.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

# $1 is the command. It runs in a new session (process group) with stdin from /dev/null; a
# watcher holds the channel's stdin, which reaches EOF only when the channel closes (we never
# send EOF), and then kills the whole group. A command that ends normally kills its watcher first.
_RUN = (
    'exec 3<&0; setsid /bin/sh -c "$1" </dev/null & p=$!; '
    '{ cat <&3 >/dev/null 2>&1; kill -KILL -"$p"; } >/dev/null 2>&1 & w=$!; exec 3<&-; '
    'wait "$p"; s=$?; kill "$w" 2>/dev/null; exit "$s"'
)
# A pty makes programs line-buffer; no pager may wait for a key we will never send.
_FOLLOW_ENV = "export PAGER=cat SYSTEMD_PAGER=cat; "
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class SshTarget:
    """A node's address. ``port``/``user`` None: use settings and the SSH config."""

    node: str
    host: str
    port: int | None = None
    user: str | None = None


@dataclass(frozen=True, slots=True)
class SshEndpoint:
    """Where a connection really goes once settings and the SSH config are applied."""

    host: str
    port: int
    user: str
    key_files: tuple[str, ...]  # IdentityFiles from the SSH config, used when key_path is unset


def default_known_hosts(settings: SshSettings, home: Path) -> Path:
    """spot's pinned host keys: ``ssh.known_hosts_file``, else ``<home>/known_hosts``."""
    return (settings.known_hosts_file or home / "known_hosts").expanduser()


def resolve_endpoint(target: SshTarget, settings: SshSettings) -> SshEndpoint:
    config = _read_ssh_config(settings.config_file).lookup(target.host) if settings.config_file else {}
    explicit = settings.model_fields_set

    def pick(own: T | None, key: str, from_config: Callable[[str], T]) -> T:
        if own is not None:
            return own
        if key in explicit or key not in config:
            return getattr(settings, key)
        return from_config(config[key])

    try:
        port = pick(target.port, "port", int)
    except ValueError:
        raise ConfigError(f"SSH config: Port {config['port']!r} for {target.host} is not a number") from None
    user = pick(target.user, "user", str)
    host = str(config.get("hostname", target.host))
    if host.startswith("-"):
        raise InputError(f"node {target.node}: invalid host {host!r}")
    return SshEndpoint(host=host, port=port, user=user, key_files=tuple(config.get("identityfile", [])))


def _read_ssh_config(path: Path) -> paramiko.SSHConfig:
    path = path.expanduser()
    if not path.is_file():
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(str(path))
    except (OSError, paramiko.SSHException) as exc:
        raise ConfigError(f"cannot read SSH config {path}: {exc}") from None


class SshTransport(Transport):
    def __init__(self, target: SshTarget, settings: SshSettings, *, known_hosts_path: Path) -> None:
        self.node = target.node
        self.target = target
        self.settings = settings
        self.endpoint = resolve_endpoint(target, settings)
        self.known_hosts = KnownHosts(known_hosts_path)
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()  # one connect at a time; channels themselves are thread-safe

    # -- the Transport calls ----------------------------------------------------------------

    def run(
        self,
        command: str,
        *,
        timeout_s: float | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        timeout = self.settings.command_timeout_s if timeout_s is None else timeout_s
        chan = self._open(lambda t: t.open_session(timeout=self.settings.connect_timeout_s))
        try:
            chan.exec_command(f"/bin/sh -c {shlex.quote(_RUN)} sh {shlex.quote(_env_prefix(env) + command)}")
            out, err, status = self._collect(chan, command, time.monotonic() + timeout, timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(exc) from exc
        finally:
            chan.close()  # on timeout this is what kills the remote command
        if status == -1 and not self._alive():
            raise self._lost(EOFError("connection closed"))
        result = CommandResult(command=command, exit_status=status,
                               stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"))
        if check and not result.ok:
            raise command_error(self.node, result)
        return result

    def put_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        def write(sftp: paramiko.SFTPClient, tmp: str) -> None:
            with sftp.open(tmp, "wb") as out:
                out.chmod(mode)  # before the data, so a secret is never readable under a wider mode
                out.write(data)

        self._put_through_temporary(path, write)

    def put_local_file(self, path: str, local: Path, *, mode: int = 0o644) -> None:
        def write(sftp: paramiko.SFTPClient, tmp: str) -> None:
            sftp.put(str(local), tmp, confirm=True)  # streamed in chunks; confirm: the size is checked
            sftp.chmod(tmp, mode)

        self._put_through_temporary(path, write)

    def _put_through_temporary(self, path: str, write: Callable[[paramiko.SFTPClient, str], None]) -> None:
        """Write a temporary file beside ``path`` with ``write``, then rename it into place, so
        a reader never sees half a file; the temporary is removed when anything fails."""
        directory, name = posixpath.split(path)
        self.run(f"mkdir -p -- {shlex.quote(directory or '/')}")
        tmp = posixpath.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        sftp = self._sftp()
        try:
            write(sftp, tmp)
            sftp.posix_rename(tmp, path)  # atomic over an existing file, unlike SFTP's rename
        except (OSError, paramiko.SSHException) as exc:
            try:
                sftp.remove(tmp)
            except (OSError, paramiko.SSHException):
                pass
            raise self._file_error("write", path, exc) from exc
        finally:
            sftp.close()

    def read_file(self, path: str) -> bytes | None:
        sftp = self._sftp()
        try:
            with sftp.open(path, "rb") as src:
                src.prefetch()
                return src.read()
        except FileNotFoundError:
            return None
        except (OSError, paramiko.SSHException) as exc:
            raise self._file_error("read", path, exc) from exc
        finally:
            sftp.close()

    def follow(self, command: str) -> Iterator[str]:
        chan = self._open(lambda t: t.open_session(timeout=self.settings.connect_timeout_s))
        try:
            # With a pty, closing the channel hangs up the terminal: the command gets SIGHUP.
            chan.get_pty(term="dumb", width=512)
            chan.exec_command(f"/bin/sh -c {shlex.quote(_FOLLOW_ENV + command)}")
            pending = b""
            while data := chan.recv(65536):
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    yield line.rstrip(b"\r").decode(errors="replace")  # the pty writes \r\n
            if pending:
                yield pending.rstrip(b"\r").decode(errors="replace")
            if not self._alive():
                raise self._lost(EOFError("connection closed"))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(exc) from exc
        finally:
            chan.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- connection ---------------------------------------------------------------------------

    def _open(self, opener: Callable[[paramiko.Transport], T]) -> T:
        """``opener`` on a live connection, reconnecting once if the kept one turns out dead."""
        for attempt in (1, 2):
            transport = self._connected()
            try:
                return opener(transport)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                with self._lock:
                    self._drop()
                if attempt == 2:
                    raise self._lost(exc) from exc
        raise AssertionError("unreachable")

    def _sftp(self) -> paramiko.SFTPClient:
        sftp = self._open(paramiko.SFTPClient.from_transport)
        if sftp is None:
            raise self._lost(EOFError("the SFTP subsystem could not be started"))
        sftp.get_channel().settimeout(self.settings.command_timeout_s)
        return sftp

    def _connected(self) -> paramiko.Transport:
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if transport is not None and transport.is_active():
                return transport
            self._drop()
            self._client = self._connect()
            transport = self._client.get_transport()
            assert transport is not None
            if self.settings.keepalive_s > 0:
                transport.set_keepalive(max(1, round(self.settings.keepalive_s)))
            return transport

    def _connect(self) -> paramiko.SSHClient:
        ep, settings = self.endpoint, self.settings
        client = paramiko.SSHClient()
        # Only our pins: paramiko checks a presented key against these and calls the policy
        # (pin on first use) when there are none. Never load_system_host_keys / AutoAddPolicy.
        for key_type, key in self.known_hosts.pinned(ep.host, ep.port).items():
            client.get_host_keys().add(host_key_name(ep.host, ep.port), key_type, key)
        client.set_missing_host_key_policy(PinOnFirstUse(self.known_hosts, node=self.node, host=ep.host, port=ep.port))
        pkey = self._load_key() if settings.key_path else None
        passphrase = settings.key_passphrase.get_secret_value() if settings.key_passphrase else None
        timeout = settings.connect_timeout_s
        try:
            client.connect(
                ep.host, ep.port, username=ep.user, pkey=pkey,
                key_filename=None if pkey else list(ep.key_files) or None,
                passphrase=None if pkey else passphrase,
                allow_agent=pkey is None, look_for_keys=pkey is None and not ep.key_files,
                timeout=timeout, banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout,
            )
        except HostKeyChangedError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise host_key_changed(node=self.node, host=ep.host, port=ep.port, pinned=exc.expected_key,
                                   presented=exc.key, known_hosts=self.known_hosts.path) from None
        except Exception as exc:  # paramiko and socket errors of every kind
            client.close()
            raise self._unreachable(*_cause(exc, ep.user, self._describe)) from None
        return client

    def _load_key(self) -> paramiko.PKey:
        assert self.settings.key_path is not None
        path = self.settings.key_path.expanduser()
        secret = self.settings.key_passphrase
        try:
            return paramiko.PKey.from_path(path, secret.get_secret_value().encode() if secret else None)
        except FileNotFoundError:
            cause, hint = f"SSH key {path} does not exist", "check ssh.key_path"
        except (OSError, TypeError, ValueError, paramiko.SSHException) as exc:
            # cryptography says "password not provided" with a TypeError.
            if secret is None and isinstance(exc, (TypeError, paramiko.PasswordRequiredException)):
                cause, hint = f"SSH key {path} is encrypted and no passphrase is set", "set ssh.key_passphrase_file"
            else:
                # Never the exception's text: it is about decrypting with the passphrase.
                cause = f"cannot load SSH key {path}: wrong passphrase or not a private key ({type(exc).__name__})"
                hint = "check ssh.key_path and ssh.key_passphrase"
        raise self._unreachable(cause, hint)

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _alive(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return transport is not None and transport.is_active()

    # -- reading a command --------------------------------------------------------------------

    def _collect(self, chan: paramiko.Channel, command: str, deadline: float, timeout: float) -> tuple[bytes, bytes, int]:
        out, err = bytearray(), bytearray()
        ready = chan.fileno()  # readable when stdout or stderr has data, and after EOF
        while True:
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            remaining = deadline - time.monotonic()
            if chan.eof_received or chan.closed:
                # All output is in; the exit status follows the EOF.
                if not chan.status_event.wait(max(remaining, 0)):
                    raise self._timed_out(command, timeout)
                while chan.recv_ready():
                    out += chan.recv(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                return bytes(out), bytes(err), chan.recv_exit_status()
            if remaining <= 0:
                raise self._timed_out(command, timeout)
            select.select([ready], [], [], min(remaining, 1.0))

    # -- errors -------------------------------------------------------------------------------

    def _where(self) -> str:
        return f"node {self.node} at {self.endpoint.host}:{self.endpoint.port}"

    def _unreachable(self, cause: str, hint: str) -> NodeUnreachableError:
        return NodeUnreachableError(f"cannot reach {self._where()}: {cause}", node=self.node, hint=hint)

    def _lost(self, exc: BaseException) -> NodeError:
        if isinstance(exc, NodeError):
            return exc
        if isinstance(exc, socket.timeout):
            return NodeTimeoutError(f"{self._where()}: no answer within {self.settings.command_timeout_s:g} s",
                                    node=self.node, hint="raise ssh.command_timeout_s if the node is just slow")
        return self._unreachable(f"connection lost ({self._describe(exc)})", "check the node is up; the next call reconnects")

    def _timed_out(self, command: str, timeout: float) -> NodeTimeoutError:
        shown = command if len(command) <= 80 else command[:77] + "..."
        return NodeTimeoutError(f"{self._where()}: command timed out after {timeout:g} s and was killed: {shown}",
                                node=self.node, hint="raise the timeout (ssh.command_timeout_s) if the command is just slow")

    def _file_error(self, verb: str, path: str, exc: BaseException) -> NodeError:
        if isinstance(exc, socket.timeout):
            return self._lost(exc)
        return NodeError(f"{self._where()}: cannot {verb} {path}: {self._describe(exc)}", node=self.node)

    def _describe(self, exc: BaseException) -> str:
        """An exception's text for a message, without the passphrase should a library echo it."""
        text, secret = _one_line(exc), self.settings.key_passphrase
        return text.replace(secret.get_secret_value(), "***") if secret and secret.get_secret_value() else text


def _cause(exc: BaseException, user: str, describe: Callable[[BaseException], str]) -> tuple[str, str]:
    """A short cause and a hint for a failed connect."""
    if isinstance(exc, paramiko.PasswordRequiredException):
        return "the SSH key is encrypted and no passphrase is set", "set ssh.key_passphrase_file"
    if isinstance(exc, paramiko.AuthenticationException):
        return (f"authentication failed as user {user!r}",
                "check that the node's authorized_keys holds your public key (ssh.key_path, the agent or ~/.ssh/id_*) "
                "and that the user is right (ssh.user)")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        refused = all(e.errno == errno.ECONNREFUSED for e in exc.errors.values())
        exc = ConnectionRefusedError() if refused else OSError(errno.EHOSTUNREACH, "host unreachable")
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused", "is sshd running on the node, and is the port right (ssh.port)?"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out", ("is the node up and its address reachable from here (firewall, security group)? "
                             "ssh.connect_timeout_s sets the wait")
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})", "check the address or the SSH config's HostName"
    # start_client() returns quietly when its timeout passes; the next call then finds no session.
    if isinstance(exc, paramiko.SSHException) and ("banner" in str(exc) or str(exc) == "No existing session"):
        return "timed out in the SSH handshake", "is it an SSH server on that port, and is the node overloaded?"
    if isinstance(exc, paramiko.SSHException):
        return f"SSH handshake failed ({describe(exc)})", "is an SSH server listening on that port?"
    if isinstance(exc, OSError):
        return exc.strerror or describe(exc), "check the node's address and that it is up"
    return describe(exc), "check the node's address and that it is up"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _env_prefix(env: Mapping[str, str] | None) -> str:
    # Exported by the command's shell: sshd would drop most variables sent with the session.
    if not env:
        return ""
    for name in env:
        if not _ENV_NAME.match(name):
            raise InputError(f"invalid environment variable name {name!r}")
    return "export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items()) + "; "


def ssh_command_argv(target: SshTarget, settings: SshSettings, known_hosts_path: Path,
                     command: str | None = None) -> list[str]:
    """argv for the system ``ssh`` client reaching the same endpoint as SshTransport, checking the
    host key against the same pins. A host never contacted by spot is refused (no prompt): connect
    through spot first. A passphrase is asked by ssh itself, never passed on the command line."""
    ep = resolve_endpoint(target, settings)
    config = settings.config_file.expanduser() if settings.config_file else None
    argv = ["ssh", "-F", str(config) if config and config.is_file() else "/dev/null",
            "-o", f"UserKnownHostsFile={Path(known_hosts_path).expanduser()}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"ConnectTimeout={math.ceil(settings.connect_timeout_s)}"]
    if settings.keepalive_s > 0:
        argv += ["-o", f"ServerAliveInterval={math.ceil(settings.keepalive_s)}"]
    argv += ["-p", str(ep.port), "-l", ep.user]
    keys = [str(settings.key_path.expanduser())] if settings.key_path else list(ep.key_files)
    for key in keys:
        argv += ["-i", key]
    if settings.key_path:
        argv += ["-o", "IdentitiesOnly=yes"]
    argv += ["--", ep.host]
    if command is not None:
        argv.append(command)
    return argv
