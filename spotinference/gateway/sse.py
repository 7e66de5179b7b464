"""Byte-level handling of vLLM's server-sent events, so the relay never parses a whole chunk.

The gateway always asks vLLM for usage on every chunk (``include_usage`` with
``continuous_usage_stats``), because an aborted stream has no final usage chunk and its last
running total is all there is to bill. The client must still see exactly what vLLM would have
sent for the options *it* gave (tests/engines/VLLM_WIRE_FORMAT.md has the captures), so:

* each chunk's ``,"usage":{...}`` member is cut out (it is compact pydantic JSON whose values
  are numbers and nulls, so its end is found by counting braces, never by decoding the chunk);
* the usage-only chunk vLLM adds last (``"choices":[]``) is dropped for clients that did not ask
  for ``include_usage``; vLLM puts ``system_fingerprint`` on whichever chunk is last, so it moves
  onto the finish chunk, which is held back until the next event shows whether it is the last.

Only the final usage object is ever JSON-decoded, once, when the stream ends.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

EVENT_END = b"\n\n"
DONE = b"data: [DONE]"
_USAGE = b',"usage":'
_EMPTY_CHOICES = b'"choices":[]'
_FINISH = b'"finish_reason":"'
_FINGERPRINT = b',"system_fingerprint":'
_ZERO_COMPLETION = re.compile(rb'"completion_tokens":0[,}]')


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
    _held: bytes | None = field(default=None, repr=False)

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
                    self._release_held(kept)
                    kept.append(event)
                continue
            cut = event.rfind(_USAGE)
            usage_end = -1
            if cut >= 0:
                usage_end = _object_end(event, cut + len(_USAGE))
                self.last_usage = event[cut + len(_USAGE) : usage_end + 1]
                if not self.first_token_seen and not _ZERO_COMPLETION.search(self.last_usage):
                    self.first_token_seen = True
            elif not self.first_token_seen and _carries_token(event):
                self.first_token_seen = True
            finish_at = event.find(_FINISH)
            if finish_at >= 0 and self.finish_reason is None:
                start = finish_at + len(_FINISH)
                self.finish_reason = event[start : event.find(b'"', start)].decode()
            if kept is None:
                continue
            if cut >= 0 and _EMPTY_CHOICES in event:
                if self.client_include_usage:
                    self._release_held(kept)
                    kept.append(event)  # the final usage chunk the client asked for
                else:
                    self._release_held(kept, fingerprint_from=event)
                continue
            if cut >= 0:
                event = event[:cut] + event[usage_end + 1 :]
            self._release_held(kept)
            if finish_at >= 0 and not self.client_include_usage:
                self._held = event  # may have to carry the usage chunk's system_fingerprint
            else:
                kept.append(event)
        if kept is None:
            return complete
        return b"".join(e + EVENT_END for e in kept)

    def _release_held(self, kept: list[bytes], fingerprint_from: bytes | None = None) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        if fingerprint_from is not None:
            at = fingerprint_from.rfind(_FINGERPRINT)
            if at >= 0 and _FINGERPRINT not in held:
                held = held[:-1] + fingerprint_from[at:-1] + b"}"
        kept.append(held)

    def drain(self) -> bytes:
        """What is still held back when a stream ends early (e.g. the engine died)."""
        held, self._held = self._held, None
        return held + EVENT_END if held is not None else b""


def _object_end(data: bytes, start: int) -> int:
    """Index of the ``}`` closing the JSON object that opens at ``start``."""
    end = data.find(b"}", start)
    while end >= 0 and data.count(b"{", start, end + 1) > data.count(b"}", start, end + 1):
        end = data.find(b"}", end + 1)
    return end if end >= 0 else len(data) - 1


def _carries_token(event: bytes) -> bool:
    # Chat: the first chunk carries only the role and empty content; a token chunk has text.
    # Completions: every chunk's "text" is a token.
    if b'"content":"' in event:
        return b'"content":""' not in event
    if b'"text":"' in event:
        return b'"text":""' not in event
    return False
