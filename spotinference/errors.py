"""One exception family for the whole library.

Each error knows the exit code the CLI returns for it and the HTTP status the gateway answers
with, so neither layer keeps its own mapping::

    SpotError                     exit 1   HTTP 500   an operation failed
    ├── InputError                exit 2   HTTP 400   the caller asked for something invalid
    │   └── ConfigError           exit 2   HTTP 500   the configuration file or SPOT_* env is bad
    ├── ReconcileMismatchError    exit 8   HTTP 409   our spend and the provider's history differ
    ├── PortTakenError            exit 10  HTTP 500   the gateway's port is already in use
    └── StoreError                exit 1   HTTP 500   the database could not do what was asked
        ├── StoreBusyError        exit 4   HTTP 503   another process held the database too long
        └── SchemaTooNewError     exit 2   HTTP 500   the database was migrated by a newer spot

The message is one line that says what was wrong; ``hint`` (optional) says what to do about it.
"""

from __future__ import annotations


class SpotError(Exception):
    exit_code: int = 1
    http_status: int = 500

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InputError(SpotError):
    exit_code = 2
    http_status = 400


class ConfigError(InputError):
    # A bad config is the operator's mistake, but over HTTP it is the server's fault.
    http_status = 500


class ReconcileMismatchError(SpotError):
    """`spot cost reconcile`: a resource-day differs past the tolerance, or could not be compared."""

    exit_code = 8
    http_status = 409


class PortTakenError(SpotError):
    """The gateway's port (or its operator port) is already in use by another process."""

    exit_code = 10


class StoreError(SpotError):
    pass


class StoreBusyError(StoreError):
    exit_code = 4
    http_status = 503


class SchemaTooNewError(StoreError):
    exit_code = 2
