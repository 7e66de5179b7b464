"""`spot demo`: the whole loop on this machine (emulated cloud, gateway, traffic, hibernation, cost)."""

from .results import DemoEvent, DemoOptions, DemoResult
from .runner import Demo
from .stopping import running_demos, stop_demo

__all__ = ["Demo", "DemoEvent", "DemoOptions", "DemoResult", "running_demos", "stop_demo"]
