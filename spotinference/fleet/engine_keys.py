"""Per-node engine API keys, derived rather than stored.

Each engine gets its own key (``vllm serve`` reads VLLM_API_KEY), so a leaked node key opens
only that node. The key is HMAC-SHA256(fleet secret, node name): the database holds nothing
secret, and the gateway recomputes a node's key when it routes to it. The fleet secret is one
random file in the data directory, mode 0600, created on first use.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SECRET_FILE = "engine.secret"


def _fleet_secret(home: Path) -> bytes:
    path = home / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    home.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its secret
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return bytes.fromhex(value)


def engine_key(home: Path, node: str) -> str:
    digest = hmac.new(_fleet_secret(home), node.encode(), hashlib.sha256).hexdigest()
    return f"sk-engine-{digest[:40]}"
