"""Which engine node holds which Responses-API response (vLLM keeps them in that node's memory).

One small file per response id under ``<home>/gateway/responses/``, written with an atomic
rename as the response passes through the gateway. Why files and not a per-worker dict or the
database: ``spot serve --workers N`` runs N processes, and a client's next request (a
``previous_response_id``, a ``GET``) may land on any of them at once; the token log reaches
DuckDB only when the spool is flushed (about a second later), and DuckDB has one writer. A
file is visible to every worker the moment it is renamed into place, survives a gateway restart
(the engine may well still hold the response), and costs one small write per response.

Old entries are pruned as new ones are written: a node's responses do not outlive its engine,
and engines are not kept for days.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KEEP_S = 7 * 24 * 3600
PRUNE_EVERY = 256  # writes


@dataclass
class ResponseHome:
    response_id: str
    model: str
    tier: str
    node: str
    base_url: str
    key_id: str | None
    created_unix: float


class ResponseHomes:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._writes = 0

    def _path(self, response_id: str) -> Path:
        # The id is the client's text (from a URL path): hashed, it can name no other file.
        return self.directory / hashlib.sha256(response_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]

    def remember(self, home: ResponseHome) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self._path(home.response_id)
            temporary = path.with_name(f".{path.name}.{os.getpid()}")
            temporary.write_text(json.dumps(asdict(home)))
            os.replace(temporary, path)
        except OSError:  # the answer still goes out; only a later by-id request will miss it
            log.exception("could not record which node holds response %s", home.response_id)
            return
        self._writes += 1
        if self._writes % PRUNE_EVERY == 0:
            self.prune()

    def find(self, response_id: str) -> ResponseHome | None:
        try:
            data = json.loads(self._path(response_id).read_text())
            found = ResponseHome(**data)
        except (OSError, ValueError, TypeError):
            return None
        return found if found.response_id == response_id else None

    def prune(self, now: float | None = None) -> None:
        cutoff = (now or time.time()) - KEEP_S
        try:
            for entry in os.scandir(self.directory):
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
        except OSError:
            log.warning("could not prune %s", self.directory, exc_info=True)
