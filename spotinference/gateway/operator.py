"""Who may read the gateway's operator endpoints, and where the operator token lives.

``/metrics`` (token totals, today's spend) and the detail of ``/health`` (models, tiers, the
budget gate's figures) describe the operator's business, so they are not for every client that
can reach the API: a request needs ``Authorization: Bearer <operator token>`` (compared in
constant time), or must arrive on the operator listener (``gateway.operator_port``), which is
meant for a private address. The token comes from the environment
(``SPOT_GATEWAY__OPERATOR_TOKEN``), ``gateway.operator_token_file``, or ``<home>/operator-token``,
which ``spot serve`` creates (mode 0600) when missing, so that local commands (``spot doctor``,
the demo) read it from the same place. The token is never printed or logged.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from ..config import Settings
from .requests import bearer_credentials, header

TOKEN_FILE = "operator-token"


def token_path(settings: Settings) -> Path:
    configured = settings.gateway.operator_token_file
    return configured.expanduser() if configured is not None else settings.home / TOKEN_FILE


def operator_token(settings: Settings, *, create: bool = False) -> str | None:
    """The operator token; with ``create``, one is written to the token file if there is none."""
    if settings.gateway.operator_token is not None:
        return settings.gateway.operator_token.get_secret_value()
    path = token_path(settings)
    found = _read(path)
    if found or not create:
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside, then linked into place: another worker starting at the same moment either
    # links first (and this one reads its token) or finds the whole file, never a partial one.
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("spot-op-" + secrets.token_urlsafe(32) + "\n")
    try:
        os.link(aside, path)
    except FileExistsError:
        pass
    finally:
        aside.unlink()
    return _read(path)


def operator_headers(settings: Settings) -> dict[str, str]:
    """The headers a local command sends to read /metrics or /health's detail (empty: none known)."""
    token = operator_token(settings)
    return {"Authorization": f"Bearer {token}"} if token else {}


def operator_endpoint(settings: Settings) -> tuple[str, dict[str, str]]:
    """Where a local command reads the gateway's operator view (root URL, headers): the operator
    listener when one is configured, else the API address with the operator token."""
    gateway = settings.gateway
    if gateway.operator_port is not None:
        return f"http://{_loopback(gateway.operator_host)}:{gateway.operator_port}", operator_headers(settings)
    return f"http://{_loopback(gateway.host)}:{gateway.port}", operator_headers(settings)


def _loopback(host: str) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    return f"[{host}]" if ":" in host else host


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


class OperatorAccess:
    """Decides, per request, whether it may see the operator's view."""

    def __init__(self, token: str | None, operator_port: int | None) -> None:
        self._token = token.encode("latin-1", "replace") if token else None
        self.operator_port = operator_port

    def allows(self, scope: Any) -> bool:
        server = scope.get("server")
        if self.operator_port is not None and server and server[1] == self.operator_port:
            return True
        if self._token is None:
            return False
        presented = bearer_credentials(header(scope, b"authorization"))
        return presented is not None and hmac.compare_digest(presented.encode("latin-1"), self._token)
