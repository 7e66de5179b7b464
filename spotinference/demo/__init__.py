"""`spot demo`: the whole loop on this machine (emulated cloud, gateway, traffic, hibernation, cost)."""

from .runner import Demo, DemoEvent, DemoOptions, DemoResult, running_demos, stop_demo

__all__ = ["Demo", "DemoEvent", "DemoOptions", "DemoResult", "running_demos", "stop_demo"]
