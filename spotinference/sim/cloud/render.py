"""The wire shapes of the emulated resources: instances, volumes, key pairs, environments.

Field names follow Hyperstack's OpenAPI file. Every address is 127.0.0.1, since every emulated
VM lives on this machine, except a real node's (``--real-nodes``): its own veth address. The
``emulator`` object in an instance is the one field real Hyperstack never sends (the node's
directory and the ports its engine and sshd listen on; for a real node none of them, since it
is reached as a real VM is: sshd on port 22 at its address, its engine at its own port there).
"""

from __future__ import annotations

from typing import Any

from . import catalog
from .clock import EmulatedClock
from .state import (
    BUILD,
    CREATING,
    DELETING,
    HIBERNATED,
    HIBERNATING,
    POWER_STATE,
    RESTORING,
    VM_STATE,
    Environment,
    KeyPair,
    VmRecord,
    Volume,
    World,
)

LOOPBACK = "127.0.0.1"


def floating_ip(vm: VmRecord) -> tuple[str | None, str]:
    """``(floating_ip, floating_ip_status)`` in the VM's current status."""
    if not vm.assign_floating_ip:
        return None, "NOT_ATTACHED"
    address = vm.address or LOOPBACK
    if vm.status in (CREATING, BUILD):
        return None, "ATTACHING"
    if vm.status == DELETING:
        return None, "DETACHED"
    if vm.status in (HIBERNATING, HIBERNATED, RESTORING) and not vm.ip_retained:
        return {
            HIBERNATING: (address, "DETACHING"),
            HIBERNATED: (None, "DETACHED"),
            RESTORING: (None, "ATTACHING"),
        }[vm.status]
    return address, "ATTACHED"


def _emulator_json(vm: VmRecord, ssh_port: int | None) -> dict[str, Any]:
    if vm.address is not None:  # a real node: nothing here, it is reached at its address
        return {"node_dir": None, "engine_port": None, "ssh_port": None, "real_node": True}
    return {"node_dir": vm.node_dir, "engine_port": vm.engine_port, "ssh_port": ssh_port}


def instance_json(vm: VmRecord, world: World, clock: EmulatedClock, *, ssh_port: int | None) -> dict[str, Any]:
    flavor = catalog.FLAVORS[vm.flavor]
    env = world.environments.get(vm.environment)
    ip, ip_status = floating_ip(vm)
    return {
        "id": vm.id,
        "name": vm.name,
        "status": vm.status,
        "power_state": POWER_STATE.get(vm.status, "SHUTDOWN"),
        "vm_state": VM_STATE.get(vm.status, "error"),
        "fixed_ip": vm.address or LOOPBACK,
        "floating_ip": ip,
        "floating_ip_status": ip_status,
        "requires_public_ip": vm.assign_floating_ip,
        "flavor": flavor.instance_json(),
        "environment": {
            "id": env.id if env else None,
            "name": vm.environment,
            "org_id": 1,
            "region": env.region if env else None,
            "features": {"network_optimised": False, "green_status": "NOT_GREEN"},
        },
        "image": {"name": vm.image},
        "keypair": {"name": vm.key_name},
        "volume_attachments": [
            attachment_json(world.volumes[vid], clock) for vid in vm.volume_ids if vid in world.volumes
        ],
        "security_rules": list(vm.security_rules),
        "labels": list(vm.labels),
        "callback_url": vm.callback_url,
        "contract_id": None,
        "locked": False,
        "os": vm.image,
        "port_randomization": False,
        "port_randomization_status": "DISABLED",
        "features": {},
        "created_at": clock.iso_at(vm.created_us),
        "emulator": _emulator_json(vm, ssh_port),
    }


def attachment_json(volume: Volume, clock: EmulatedClock) -> dict[str, Any]:
    return {
        "id": volume.attachment_id,
        "device": "/dev/vdb",
        "status": "ATTACHED",
        "protected": False,
        "created_at": clock.iso_at(volume.attached_us),
        "volume": {"id": volume.id, "name": volume.name, "size": volume.size_gb,
                   "volume_type": volume.volume_type, "bootable": False, "description": ""},
    }


def volume_json(volume: Volume, world: World, clock: EmulatedClock) -> dict[str, Any]:
    env = world.environments.get(volume.environment)
    attachments = []
    if volume.attached_to is not None:
        attachments.append({"id": volume.attachment_id, "instance_id": volume.attached_to,
                            "device": "/dev/vdb", "status": "ATTACHED", "protected": False})
    return {
        "id": volume.id,
        "name": volume.name,
        "environment": {"name": volume.environment, "region": env.region if env else None, "features": {}},
        "description": "",
        "volume_type": volume.volume_type,
        "size": volume.size_gb,
        "status": "in-use" if volume.attached_to is not None else "available",
        "bootable": False,
        "image_id": None,
        "callback_url": None,
        "attachments": attachments,
        "created_at": clock.iso_at(volume.created_us),
        "updated_at": clock.iso_at(volume.attached_us or volume.created_us),
    }


def environment_json(env: Environment, clock: EmulatedClock) -> dict[str, Any]:
    return {
        "id": env.id,
        "name": env.name,
        "region": env.region,
        "features": {"network_optimised": False, "green_status": "NOT_GREEN"},
        "created_at": clock.iso_at(env.created_us),
    }


def keypair_json(key: KeyPair, world: World, clock: EmulatedClock) -> dict[str, Any]:
    env = world.environments.get(key.environment)
    return {
        "id": key.id,
        "name": key.name,
        "environment": {"id": env.id if env else None, "name": key.environment,
                        "region": env.region if env else None, "features": {}},
        "public_key": key.public_key,
        "fingerprint": key.fingerprint,
        "created_at": clock.iso_at(key.created_us),
    }
