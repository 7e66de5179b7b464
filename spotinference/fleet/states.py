"""Node states (DESIGN.md, "Tiers and nodes") and how a provider's VM plus the engine's health
map onto them.

    provisioning → bootstrapping → serving → hibernating → hibernated → waking → serving
    plus stopped (a VM shut off: still billed in full), failed, terminated.
"""

from __future__ import annotations

from enum import StrEnum

from ..providers import Vm, VmPhase


class NodeState(StrEnum):
    PROVISIONING = "provisioning"
    BOOTSTRAPPING = "bootstrapping"
    SERVING = "serving"
    HIBERNATING = "hibernating"
    HIBERNATED = "hibernated"
    WAKING = "waking"
    STOPPED = "stopped"
    FAILED = "failed"
    TERMINATED = "terminated"


_BY_PHASE = {
    VmPhase.CREATING: NodeState.PROVISIONING,
    VmPhase.HIBERNATING: NodeState.HIBERNATING,
    VmPhase.HIBERNATED: NodeState.HIBERNATED,
    VmPhase.RESTORING: NodeState.WAKING,
    VmPhase.STOPPED: NodeState.STOPPED,
    VmPhase.DELETING: NodeState.TERMINATED,
    VmPhase.ERROR: NodeState.FAILED,
}


def node_state(vm: Vm | None, *, engine_healthy: bool, last_state: NodeState | None = None) -> NodeState:
    """The node's state now. The provider decides everything but serving, which only a healthy
    engine makes true; between the VM running and the engine answering, a node that was waking
    is still waking and any other is bootstrapping."""
    if vm is None:
        return NodeState.TERMINATED
    if vm.phase is not VmPhase.RUNNING:
        return _BY_PHASE[vm.phase]
    if not vm.ready:
        return NodeState.WAKING if last_state in (NodeState.WAKING, NodeState.HIBERNATED) else NodeState.PROVISIONING
    if engine_healthy:
        return NodeState.SERVING
    if last_state in (NodeState.WAKING, NodeState.HIBERNATED):
        return NodeState.WAKING
    if last_state is NodeState.FAILED:
        return NodeState.FAILED  # its engine unit failed (crash loop): so until it answers or is bootstrapped again
    return NodeState.BOOTSTRAPPING
