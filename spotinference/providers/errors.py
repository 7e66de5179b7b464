"""Errors from a cloud provider, carrying the provider's own message.

    SpotError
    └── ProviderError                 exit 1   HTTP 502   the provider refused or failed a call
        ├── ProviderAuthError         exit 2   HTTP 502   the API key is missing, wrong or lacks rights
        ├── ProviderNotFoundError     exit 1   HTTP 502   the resource does not exist (any more)
        ├── ProviderRateLimitedError  exit 4   HTTP 503   still rate limited when the deadline ran out
        ├── ProviderUnavailableError  exit 4   HTTP 503   5xx, timeouts, dropped connections past the deadline
        │   └── ProviderUnreachableError exit 4 HTTP 503  no connection at all (refused, DNS) for a few seconds
        ├── InsufficientCapacityError exit 5   HTTP 503   no GPU capacity for a create or a restore
        └── ProviderNotSupportedError exit 1   HTTP 501   this provider does not offer what was asked

A message never contains the API key: implementations build it from the provider's answer only.
"""

from __future__ import annotations

from ..errors import SpotError


class ProviderError(SpotError):
    http_status = 502

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status_code: int | None = None,
        reason: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.provider = provider
        self.status_code = status_code  # the HTTP status the provider answered, if any
        self.reason = reason  # the provider's own error code (Hyperstack: error_reason)


class ProviderAuthError(ProviderError):
    exit_code = 2


class ProviderNotFoundError(ProviderError):
    pass


class ProviderRateLimitedError(ProviderError):
    exit_code = 4
    http_status = 503


class ProviderUnavailableError(ProviderError):
    exit_code = 4
    http_status = 503


class ProviderUnreachableError(ProviderUnavailableError):
    """Not even a connection (refused, DNS failure): fails in seconds, not after the retry deadline."""


class InsufficientCapacityError(ProviderError):
    exit_code = 5
    http_status = 503


class ProviderNotSupportedError(ProviderError):
    http_status = 501
