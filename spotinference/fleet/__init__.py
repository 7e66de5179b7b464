"""The lifecycle of tiers and nodes: up, down, wake, hibernate, and the node states."""
