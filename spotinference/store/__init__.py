"""The store: DuckDB shared safely by the gateway, cron's sampler and operators' commands."""

from .database import FlushResult, SchemaStatus, Store
from .spool import SpoolWriter

__all__ = ["FlushResult", "SchemaStatus", "SpoolWriter", "Store"]
