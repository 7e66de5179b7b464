"""Real nodes: Debian bookworm booted with systemd in a container, for tests and drills.

One job per module::

    host      what the machine must have (root, debootstrap, systemd-nspawn, ip, losetup); one-line errors
    image     the bookworm root, built once per machine with debootstrap and cached (lock + atomic rename)
    network   address slots that never collide, the network namespace and its veth pair
    volume    the weights volume: a sparse file attached as a loop device
    node      RealNode: make, boot, power off, delete one node
    wheelhouse  the wheels a node's pip installs from (it has no internet), downloaded once per machine
"""

from .host import RealNodeError
from .node import RealNode, RealNodeSpec

__all__ = ["RealNode", "RealNodeError", "RealNodeSpec"]
