"""The store: DuckDB shared safely by the gateway, cron's sampler and operators' commands."""

from .database import FlushResult, SchemaStatus, Store
from .flusher import SpoolFlusher
from .spool import SpoolWriter

__all__ = ["FlushResult", "SchemaStatus", "SpoolFlusher", "SpoolWriter", "Store"]
