"""The node transports: one contract run against both the local transport and SSH to a real
sshd on loopback (tests/sshd.py), then what only SSH has: host-key pinning, ~/.ssh/config,
authentication failures. The "remote" processes of the SSH transport live on this machine, so
both transports' tests check that a killed command is really gone by looking at /proc."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import stat
import subprocess
import time
from pathlib import Path

import paramiko
import pytest

from spotinference.config.models import SshSettings
from spotinference.nodes.errors import HostKeyChangedError, NodeCommandError, NodeTimeoutError, NodeUnreachableError
from spotinference.nodes.host_keys import forget_host
from spotinference.nodes.local import LocalTransport
from spotinference.nodes.ssh import SshEndpoint, SshTarget, SshTransport, resolve_endpoint, ssh_command_argv
from spotinference.nodes.transport import Transport
from tests.servers import free_port
from tests.sshd import SshdServer, keygen


def ssh_settings(server: SshdServer, **overrides: object) -> SshSettings:
    values: dict[str, object] = {"user": server.user, "key_path": server.client_key, "config_file": None,
                                 "connect_timeout_s": 10, "command_timeout_s": 30, "keepalive_s": 5}
    values.update(overrides)
    return SshSettings(**values)


def ssh_transport(server: SshdServer, known_hosts: Path, *, node: str = "ssh-node", **overrides: object) -> SshTransport:
    return SshTransport(SshTarget(node, server.host, server.port), ssh_settings(server, **overrides),
                        known_hosts_path=known_hosts)


@pytest.fixture(params=["local", "ssh"])
def transport(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        t: Transport = LocalTransport("local-node", command_timeout_s=30)
    else:
        t = ssh_transport(request.getfixturevalue("sshd"), tmp_path / "known_hosts")
    yield t
    t.close()


def marker() -> str:
    return str(secrets.randbelow(10**9) + 10**9)


def processes_with(text: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except OSError:
            continue
        if text in cmdline and not zombie:
            found.append(int(entry.name))
    return found


def gone(text: str, within_s: float = 15.0) -> list[int]:
    """Processes still running with ``text`` in their command line once they have had time to die
    (the kill travels over a channel close for SSH); an empty list when all are gone."""
    deadline = time.monotonic() + within_s
    while (left := processes_with(text)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# -- the shared contract ------------------------------------------------------------------------

def test_run_returns_output_and_exit_status(transport: Transport) -> None:
    result = transport.run("echo out; echo err >&2; exit 3", check=False)
    assert (result.exit_status, result.stdout, result.stderr, result.ok) == (3, "out\n", "err\n", False)
    assert transport.run("printf 'a\\nb'").stdout == "a\nb"


def test_a_failing_command_raises_with_the_tail_of_stderr(transport: Transport) -> None:
    with pytest.raises(NodeCommandError) as caught:
        transport.run("echo noise >&2; echo 'disk is full' >&2; exit 4")
    err = caught.value
    assert (err.node, err.exit_status, err.command) == (transport.node, 4, "echo noise >&2; echo 'disk is full' >&2; exit 4")
    assert "noise\ndisk is full" in err.stderr
    assert "disk is full" in str(err) and transport.node in str(err) and "\n" not in str(err)


def test_env_is_passed_on_top_of_the_environment(transport: Transport) -> None:
    value = "it's $HOME and \"quotes\""
    out = transport.run('printf "%s|%s" "$GREETING" "${HOME:+home-set}"', env={"GREETING": value}).stdout
    assert out == f"{value}|home-set"


def test_a_command_past_its_timeout_is_killed_with_its_children(transport: Transport) -> None:
    m = marker()
    with pytest.raises(NodeTimeoutError) as caught:
        transport.run(f"sleep 900.{m} & sleep 901.{m}; echo {m}", timeout_s=1)
    assert caught.value.node == transport.node
    assert gone(m) == []
    assert transport.run("echo still-usable").stdout == "still-usable\n"


def test_put_file_replaces_atomically_with_mode_and_parents(transport: Transport, tmp_path: Path) -> None:
    path = tmp_path / "node" / "etc" / "spot" / "engine.env"
    transport.put_file(str(path), b"one", mode=0o600)
    assert path.read_bytes() == b"one"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first_inode = path.stat().st_ino
    with path.open("rb") as reader:
        transport.put_file(str(path), b"two\x00\xff", mode=0o640)
        # Replaced by a rename, not rewritten in place: an open reader keeps the old content.
        assert reader.read() == b"one"
    assert path.read_bytes() == b"two\x00\xff"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.stat().st_ino != first_inode
    assert os.listdir(path.parent) == ["engine.env"]  # no temporary file left behind


def test_read_file(transport: Transport, tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(b"\x00\x01binary\xff")
    assert transport.read_file(str(tmp_path / "data.bin")) == b"\x00\x01binary\xff"
    assert transport.read_file(str(tmp_path / "missing")) is None


def test_follow_yields_lines_until_the_command_ends(transport: Transport) -> None:
    assert list(transport.follow("echo first; echo; printf 'no newline'")) == ["first", "", "no newline"]


def test_closing_follow_stops_its_command(transport: Transport) -> None:
    m = marker()
    lines = transport.follow(f"echo start; while :; do echo tick {m}; sleep 0.05; done")
    assert next(lines) == "start"
    assert next(lines) == f"tick {m}"
    assert processes_with(m)
    lines.close()
    assert gone(m) == []


# -- SSH only ------------------------------------------------------------------------------------

def test_first_contact_pins_the_host_key(sshd: SshdServer, tmp_path: Path) -> None:
    known_hosts = tmp_path / "spot" / "known_hosts"
    with ssh_transport(sshd, known_hosts) as t:
        t.run("true")
    assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600
    host_key = Path(f"{sshd.host_key}.pub").read_text().split()
    assert known_hosts.read_text().split() == [f"[127.0.0.1]:{sshd.port}", host_key[0], host_key[1]]
    with ssh_transport(sshd, known_hosts) as t:  # the pinned key matches
        assert t.run("echo again").stdout == "again\n"
    assert len(known_hosts.read_text().splitlines()) == 1


def test_a_changed_host_key_is_refused_until_forgotten(sshd_factory, tmp_path: Path) -> None:
    server: SshdServer = sshd_factory()
    known_hosts = tmp_path / "known_hosts"
    old = paramiko.Ed25519Key.from_path(server.host_key).fingerprint
    with ssh_transport(server, known_hosts, node="gpu-7") as t:
        t.run("true")
    server.restart(new_host_key=True)
    new = paramiko.Ed25519Key.from_path(server.host_key).fingerprint
    assert new != old
    with pytest.raises(HostKeyChangedError) as caught, ssh_transport(server, known_hosts, node="gpu-7") as t:
        t.run("true")
    err = caught.value
    assert err.node == "gpu-7"
    for part in ("gpu-7", f"127.0.0.1:{server.port}", old, new):
        assert part in str(err)
    assert err.hint and "ssh-keygen -R" in err.hint and str(known_hosts) in err.hint
    assert forget_host(known_hosts, "127.0.0.1", server.port) == 1
    with ssh_transport(server, known_hosts, node="gpu-7") as t:
        assert t.run("echo re-pinned").stdout == "re-pinned\n"
    assert Path(f"{server.host_key}.pub").read_text().split()[1] in known_hosts.read_text()


def test_the_connection_is_reused_and_reopened_after_a_drop(sshd_factory, tmp_path: Path) -> None:
    server: SshdServer = sshd_factory()
    with ssh_transport(server, tmp_path / "known_hosts") as t:
        first = t.run("echo $SSH_CONNECTION").stdout
        assert t.run("echo $SSH_CONNECTION").stdout == first  # same TCP connection
        server.drop_connections()  # the kept connection dies under the transport
        assert t.run("echo $SSH_CONNECTION").stdout not in ("", first)


def test_ssh_config_supplies_hostname_port_user_and_key(sshd: SshdServer, tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(f"Host mynode\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
                      f"  IdentityFile {sshd.client_key}\n\nHost *\n  User nobody-else\n")
    settings = SshSettings(config_file=config, connect_timeout_s=10)  # nothing explicit
    target = SshTarget("cfg-node", "mynode")
    assert resolve_endpoint(target, settings) == SshEndpoint("127.0.0.1", sshd.port, sshd.user, (str(sshd.client_key),))
    known_hosts = tmp_path / "known_hosts"
    with SshTransport(target, settings, known_hosts_path=known_hosts) as t:
        assert t.run("id -un").stdout.strip() == sshd.user
    assert f"[127.0.0.1]:{sshd.port}" in known_hosts.read_text()
    # Explicit values win: the target's own, then those set in spot's settings.
    own = resolve_endpoint(SshTarget("n", "mynode", port=2200, user="t"), settings)
    assert (own.host, own.port, own.user) == ("127.0.0.1", 2200, "t")
    explicit = resolve_endpoint(target, SshSettings(config_file=config, port=2222, user="ops"))
    assert (explicit.port, explicit.user) == (2222, "ops")
    assert resolve_endpoint(SshTarget("n", "other"), settings).user == "nobody-else"
    assert resolve_endpoint(target, SshSettings(config_file=None)) == SshEndpoint("mynode", 22, "ubuntu", ())


def test_system_ssh_argv_uses_the_same_pins(sshd: SshdServer, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    target = SshTarget("ssh-node", sshd.host, sshd.port)
    settings = ssh_settings(sshd)
    argv = ssh_command_argv(target, settings, known_hosts, "echo via-system-ssh")
    refused = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr  # never contacted
    with SshTransport(target, settings, known_hosts_path=known_hosts) as t:
        t.run("true")
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert (done.returncode, done.stdout) == (0, "via-system-ssh\n"), done.stderr
    assert ssh_command_argv(target, settings, known_hosts, None)[-1] == sshd.host  # interactive shell


def test_a_key_the_node_does_not_accept_is_an_auth_failure(sshd: SshdServer, tmp_path: Path) -> None:
    stranger = keygen(tmp_path / "stranger")
    with pytest.raises(NodeUnreachableError) as caught, ssh_transport(sshd, tmp_path / "kh", key_path=stranger) as t:
        t.run("true")
    err = caught.value
    assert str(err).startswith(f"cannot reach node ssh-node at 127.0.0.1:{sshd.port}: authentication failed")
    assert err.hint and "authorized_keys" in err.hint and err.exit_code == 6


def test_a_closed_port_is_unreachable(sshd: SshdServer, tmp_path: Path) -> None:
    port = free_port()
    target = SshTarget("dead-node", "127.0.0.1", port)
    with pytest.raises(NodeUnreachableError) as caught, \
            SshTransport(target, ssh_settings(sshd), known_hosts_path=tmp_path / "kh") as t:
        t.read_file("/etc/hostname")
    assert str(caught.value) == f"cannot reach node dead-node at 127.0.0.1:{port}: connection refused"
    assert not (tmp_path / "kh").exists()


def test_a_port_that_never_answers_times_out(sshd: SshdServer, tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts TCP (the kernel does) but never sends a banner
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        settings = ssh_settings(sshd, connect_timeout_s=0.5)
        with pytest.raises(NodeUnreachableError) as caught, \
                SshTransport(SshTarget("mute-node", "127.0.0.1", port), settings, known_hosts_path=tmp_path / "kh") as t:
            t.run("true")
    assert str(caught.value).startswith(f"cannot reach node mute-node at 127.0.0.1:{port}: timed out")


def test_an_encrypted_key_works_and_its_passphrase_is_never_shown(
        sshd: SshdServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    passphrase = f"pass-{marker()}-phrase"
    key = keygen(tmp_path / "locked", passphrase=passphrase)
    sshd.authorize(Path(f"{key}.pub"))
    with ssh_transport(sshd, tmp_path / "kh", key_path=key, key_passphrase=passphrase) as t:
        assert t.run("echo unlocked").stdout == "unlocked\n"

    stranger = keygen(tmp_path / "locked-stranger", passphrase=passphrase)
    attempts = [
        ({"key_path": key, "key_passphrase": "not-it"}, "wrong passphrase"),
        ({"key_path": key}, "is encrypted and no passphrase is set"),
        ({"key_path": stranger, "key_passphrase": passphrase}, "authentication failed"),  # decrypts; refused
    ]
    for settings, cause in attempts:
        with pytest.raises(NodeUnreachableError) as caught, ssh_transport(sshd, tmp_path / "kh", **settings) as t:
            t.run("true")
        err = caught.value
        assert cause in str(err)
        assert passphrase not in f"{err} {err.hint} {err!r} {err.__cause__!r}"
    assert passphrase not in caplog.text
