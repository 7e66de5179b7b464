"""Billing: the sampler (`spot sample`) and the cost report's inputs."""
