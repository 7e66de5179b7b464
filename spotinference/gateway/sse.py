"""Byte-level handling of vLLM's server-sent events, so the relay never parses a whole chunk.

The gateway always asks vLLM for usage on every chunk (``include_usage`` with
``continuous_usage_stats``), because an aborted stream has no final usage chunk and its last
running total is all there is to bill. The client must still see exactly what vLLM would have
sent for the options *it* gave, so this module removes what it did not ask for:

* vLLM serialises chunks with pydantic's ``model_dump_json`` (no spaces, fields in declaration
  order), and ``usage`` is the last field of a chunk object, so a chunk's usage is the tail
  ``,"usage":{...}}`` and can be cut with one ``rfind``.
* The usage-only chunk vLLM adds at the end has ``"choices":[]``; it is dropped for clients that
  did not ask for ``include_usage``.

Only the usage object itself is ever JSON-decoded, once, when the stream ends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

EVENT_END = b"\n\n"
DONE = b"data: [DONE]"
_USAGE = b',"usage":'
_EMPTY_CHOICES = b'"choices":[]'
_FINISH = b'"finish_reason":"'


@dataclass
class StreamState:
    """What the relay learns from a stream as it passes."""

    client_include_usage: bool
    client_continuous_usage: bool
    last_usage: bytes | None = None
    finish_reason: str | None = None
    first_token_seen: bool = False
    done: bool = False
    events: int = 0
    _pending: bytes = field(default=b"", repr=False)

    @property
    def rewrite(self) -> bool:
        return not (self.client_include_usage and self.client_continuous_usage)

    def usage(self) -> tuple[int, int] | None:
        """(prompt_tokens, completion_tokens) from the last usage seen, if any."""
        if self.last_usage is None:
            return None
        try:
            data = json.loads(self.last_usage)
            return int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0)
        except (ValueError, TypeError, AttributeError):
            return None

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """Take bytes from upstream; return (bytes to send the client now, first token among them)."""
        if self._pending:
            data = self._pending + data
        end = data.rfind(EVENT_END)
        if end < 0:
            self._pending = data
            return b"", False
        complete = data[: end + 2]
        self._pending = data[end + 2 :]
        first_before = self.first_token_seen
        out = self._events(complete)
        return out, (self.first_token_seen and not first_before)

    def _events(self, complete: bytes) -> bytes:
        rewrite = self.rewrite
        kept: list[bytes] | None = [] if rewrite else None
        for event in complete.split(EVENT_END):
            if not event:
                continue
            self.events += 1
            if event == DONE:
                self.done = True
                if kept is not None:
                    kept.append(event)
                continue
            cut = event.rfind(_USAGE)
            if cut >= 0:
                self.last_usage = event[cut + len(_USAGE) : -1]
            if not self.first_token_seen and _carries_token(event):
                self.first_token_seen = True
            if self.finish_reason is None:
                at = event.find(_FINISH)
                if at >= 0:
                    start = at + len(_FINISH)
                    self.finish_reason = event[start : event.find(b'"', start)].decode()
            if kept is None:
                continue
            if cut >= 0:
                if _EMPTY_CHOICES in event:
                    if self.client_include_usage:
                        kept.append(event)  # the final usage chunk the client asked for
                    continue
                event = event[:cut] + b"}"
            kept.append(event)
        if kept is None:
            return complete
        return b"".join(e + EVENT_END for e in kept)

    def leftover(self) -> bytes:
        """Bytes after the last complete event when the stream ended (normally none)."""
        return self._pending


def _carries_token(event: bytes) -> bool:
    # Chat: the first chunk carries only the role and empty content; a token chunk has text.
    # Completions: every chunk's "text" is a token.
    if b'"content":"' in event:
        return b'"content":""' not in event
    if b'"text":"' in event:
        return b'"text":""' not in event
    return False
