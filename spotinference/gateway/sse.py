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
    _rewrite: bool = field(default=True, init=False, repr=False)

    def __post_init__(self) -> None:
        # The client asked for exactly what the gateway asks vLLM for: its bytes pass unchanged.
        self._rewrite = not (self.client_include_usage and self.client_continuous_usage)

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
        end = data.rfind(EVENT_END) + 2
        if end < 2:
            self._pending = data
            return b"", False
        if end == len(data):
            self._pending = b""
        else:
            self._pending = data[end:]
            data = data[:end]
        first_before = self.first_token_seen
        # This runs for every chunk of every stream: the usual read is one whole event, handled
        # without splitting and joining.
        if data.find(EVENT_END) == end - 2:
            out = self._event(data[:-2])
        else:
            out = b"".join([self._event(event) for event in data.split(EVENT_END) if event])
        return (out if self._rewrite else data), (self.first_token_seen and not first_before)

    def _event(self, event: bytes) -> bytes:
        """Learn from one event (without its blank line); return what the client gets for it."""
        self.events += 1
        if event == DONE:
            self.done = True
            return self._release_held() + DONE + EVENT_END
        cut = event.rfind(_USAGE)
        if cut >= 0:
            begin = cut + len(_USAGE)
            usage_end = event.find(b"}", begin)
            if usage_end < 0 or event.find(b"{", begin + 1, usage_end) >= 0:  # nested (token details)
                usage_end = _object_end(event, begin)
            self.last_usage = event[begin : usage_end + 1]
            if not self.first_token_seen and not _ZERO_COMPLETION.search(self.last_usage):
                self.first_token_seen = True
        elif not self.first_token_seen and _carries_token(event):
            self.first_token_seen = True
        finish_at = event.find(_FINISH)
        if finish_at >= 0 and self.finish_reason is None:
            start = finish_at + len(_FINISH)
            self.finish_reason = event[start : event.find(b'"', start)].decode()
        if not self._rewrite:
            return b""  # the caller passes the bytes through as they came
        if cut >= 0:
            if _EMPTY_CHOICES in event:
                if self.client_include_usage:
                    return self._release_held() + event + EVENT_END  # the final usage chunk the client asked for
                return self._release_held(fingerprint_from=event)
            event = event[:cut] + event[usage_end + 1 :]
        held = self._release_held()
        if finish_at >= 0 and not self.client_include_usage:
            self._held = event  # may have to carry the usage chunk's system_fingerprint
            return held
        return held + event + EVENT_END

    def _release_held(self, fingerprint_from: bytes | None = None) -> bytes:
        held = self._held
        if held is None:
            return b""
        self._held = None
        if fingerprint_from is not None:
            at = fingerprint_from.rfind(_FINGERPRINT)
            if at >= 0 and _FINGERPRINT not in held:
                held = held[:-1] + fingerprint_from[at:-1] + b"}"
        return held + EVENT_END

    def drain(self) -> bytes:
        """What is still held back when a stream ends early (e.g. the engine died)."""
        return self._release_held()


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
