"""How to reach a node: its transport (SSH, or local for emulated nodes) and its engine's URL."""

from __future__ import annotations

from ..config import Settings, Tier
from ..nodes.engine_unit import NodeLayout
from ..nodes.transport import Transport
from ..providers import Vm


def layout_for(vm: Vm) -> NodeLayout:
    return NodeLayout.for_node(str(vm.node_dir) if vm.node_dir else None)


def engine_port(vm: Vm, tier: Tier) -> int:
    # Emulated VMs share 127.0.0.1, so the emulator gives each its own engine port.
    return vm.engine_port or tier.vllm.port


def engine_url(vm: Vm, tier: Tier) -> str | None:
    if not vm.ip:
        return None
    return f"http://{vm.ip}:{engine_port(vm, tier)}"


def engine_bind_host(vm: Vm) -> str:
    # A real VM's engine listens on every interface (the firewall admits only the gateway);
    # an emulated one only on loopback.
    return "127.0.0.1" if vm.node_dir else "0.0.0.0"


def uses_local_transport(vm: Vm, settings: Settings, tier: Tier) -> bool:
    mode = settings.providers[tier.provider].node_transport
    if mode == "local":
        return True
    if mode == "ssh":
        return False
    return vm.node_dir is not None and vm.ssh_port is None


def transport_for(vm: Vm, settings: Settings, tier: Tier) -> Transport:
    if uses_local_transport(vm, settings, tier):
        from ..nodes.local import LocalTransport

        return LocalTransport(vm.name, command_timeout_s=settings.ssh.command_timeout_s)
    from ..nodes.ssh import SshTarget, SshTransport

    host = vm.ip or vm.private_ip
    if host is None:
        from ..nodes.errors import NodeUnreachableError

        raise NodeUnreachableError(f"node {vm.name} has no IP address yet", node=vm.name)
    target = SshTarget(node=vm.name, host=host, port=vm.ssh_port or settings.ssh.port, user=settings.ssh.user)
    return SshTransport(target, settings.ssh, known_hosts_path=known_hosts_path(settings))


def known_hosts_path(settings: Settings):  # noqa: ANN201 - a Path
    return settings.ssh.known_hosts_file.expanduser() if settings.ssh.known_hosts_file else settings.home / "known_hosts"
