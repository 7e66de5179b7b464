"""Reaching one node by name: its logs, a command on it, an interactive shell."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator

from ..config import Tier
from ..errors import InputError
from ..nodes.transport import CommandResult
from ..providers import Vm
from .connect import known_hosts_path, layout_for, uses_local_transport
from .context import FleetContext
from .naming import parse_node_name


def locate(ctx: FleetContext, name: str) -> tuple[Tier, Vm]:
    parsed = parse_node_name(name)
    if parsed is None:
        raise InputError(f"{name!r} is not a node name: expected spot-<tier>-<n>, e.g. spot-demo-1 (see `spot status`)")
    tier = ctx.tier(parsed[0])
    vm = ctx.provider(tier.provider).find_vm(name)
    if vm is None:
        raise InputError(f"no node named {name} at provider {tier.provider!r}", hint="`spot status` lists the nodes")
    return tier, vm


def node_logs(ctx: FleetContext, name: str, *, follow: bool, lines: int = 200) -> Iterator[str]:
    tier, vm = locate(ctx, name)
    command = layout_for(vm).log_command(follow=follow, lines=lines)
    with ctx.transport(vm, tier) as transport:
        if follow:
            yield from transport.follow(command)
        else:
            yield from transport.run(command, check=False).stdout.splitlines()


def run_on_node(ctx: FleetContext, name: str, argv: list[str]) -> CommandResult:
    tier, vm = locate(ctx, name)
    command = shlex.join(argv)
    if vm.node_dir:
        # An emulated VM's filesystem is its node directory: commands start there, as in / on a VM.
        command = f"cd {shlex.quote(str(vm.node_dir))} && {command}"
    with ctx.transport(vm, tier) as transport:
        return transport.run(command, check=False)


def node_shell_argv(ctx: FleetContext, name: str) -> list[str]:
    """The argv of an interactive shell on the node (the system ssh client, with spot's pinned
    host keys; or a local shell in an emulated node's directory)."""
    tier, vm = locate(ctx, name)
    if uses_local_transport(vm, ctx.settings, tier):
        shell = os.environ.get("SHELL", "/bin/sh")
        return ["/bin/sh", "-c", f"cd {shlex.quote(str(vm.node_dir))} && exec {shlex.quote(shell)} -i"]
    from ..nodes.ssh import SshTarget, ssh_command_argv

    # The system ssh client trusts only pinned keys: a first contact through our transport pins it.
    with ctx.transport(vm, tier) as transport:
        transport.run("true")
    target = SshTarget(node=vm.name, host=vm.ip or "", port=vm.ssh_port or ctx.settings.ssh.port, user=ctx.settings.ssh.user)
    return ssh_command_argv(target, ctx.settings.ssh, known_hosts_path(ctx.settings), None)
