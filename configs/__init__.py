"""Default and example configurations, read with importlib.resources."""
