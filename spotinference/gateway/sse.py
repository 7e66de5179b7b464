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

vLLM's running usage is per choice: with ``n`` > 1, or several prompts on ``/v1/completions``
(choice ``index`` = prompt_index * n + i), each chunk carries the totals of *its* choice only.
So the last usage bytes are kept per choice index (read with two byte searches at the chunk's
head, never by decoding it), and an aborted stream is billed the sum over choices, each prompt's
tokens once, as vLLM's own final usage counts them.

Usage objects are JSON-decoded only when the stream ends, and checked then (``parse_usage``): an
engine that sends ``1e400``, a negative or a string count is an engine fault, not a bill.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .errors import EngineFault

EVENT_END = b"\n\n"
DONE = b"data: [DONE]"
_USAGE = b',"usage":'
_FINISH = b'"finish_reason":"'
_FINGERPRINT = b',"system_fingerprint":'
_ZERO_COMPLETION = re.compile(rb'"completion_tokens":0[,}]')
_CHOICES = b'"choices":['
_INDEX = b'{"index":'
# No request has this many tokens; a count past it is a broken or hostile engine, not a bill.
MAX_TOKENS = 2**31 - 1
# Distinct choice indexes kept per stream (vLLM's own n limit is 16384, times the prompts): past
# it an engine is inventing choices, and keeping each one's usage would grow without bound.
MAX_CHOICES = 65536
# One event's bytes held while it arrives in pieces; past this the engine is not sending SSE.
MAX_EVENT_BYTES = 64 * 1024 * 1024
_BRACE = re.compile(rb"[{}]")


class UsageError(EngineFault, ValueError):
    """The engine's usage object cannot be billed (not JSON, not counts, absurd counts)."""


class StreamFormatError(EngineFault, ValueError):
    """The engine's stream broke a rule the relay relies on (e.g. bytes that are not UTF-8)."""


def parse_usage(raw: bytes) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) from a usage object's bytes, or UsageError."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise UsageError(f"usage is not JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise UsageError(f"usage is a {type(data).__name__}, not an object")
    return _count(data, "prompt_tokens"), _count(data, "completion_tokens")


def _count(usage: dict, key: str) -> int:
    value = usage.get(key)
    if type(value) is not int or not 0 <= value <= MAX_TOKENS:
        shown = repr(value)[:40]
        raise UsageError(f"usage.{key} is {shown}: expected a whole number from 0 to {MAX_TOKENS}")
    return value


@dataclass
class StreamState:
    """What the relay learns from a stream as it passes."""

    client_include_usage: bool
    client_continuous_usage: bool
    choices_per_prompt: int = 1  # the request's n: choice index // n is the prompt's index
    one_choice: bool = False  # one prompt and n=1: no choice index to read per chunk
    final_usage: bytes | None = None  # vLLM's usage-only chunk: the whole request's totals
    finish_reason: str | None = None
    first_token_seen: bool = False
    done: bool = False
    events: int = 0
    _pending: list[bytes] = field(default_factory=list, repr=False)  # the pieces of an unfinished event
    _pending_bytes: int = field(default=0, repr=False)
    _held: bytes | None = field(default=None, repr=False)
    _rewrite: bool = field(default=True, init=False, repr=False)
    _running: dict[int, bytes] = field(default_factory=dict, init=False, repr=False)  # choice -> its last usage

    def __post_init__(self) -> None:
        # The client asked for exactly what the gateway asks vLLM for: its bytes pass unchanged.
        self._rewrite = not (self.client_include_usage and self.client_continuous_usage)

    def usage(self) -> tuple[int, int] | None:
        """(prompt_tokens, completion_tokens): vLLM's final usage if it came, else the running
        totals summed over choices; None if no usage was seen. Raises UsageError."""
        if self.final_usage is not None:
            return parse_usage(self.final_usage)
        return self.running_usage()

    def running_usage(self) -> tuple[int, int] | None:
        """The per-choice running totals summed: completion tokens over every choice, prompt
        tokens once per prompt (vLLM repeats a prompt's count on each of its n choices)."""
        if not self._running:
            return None
        n = max(self.choices_per_prompt, 1)
        prompts: dict[int, int] = {}
        completion = 0
        for index, raw in self._running.items():
            prompt_tokens, completion_tokens = parse_usage(raw)
            completion += completion_tokens
            prompts.setdefault(index // n, prompt_tokens)
        return sum(prompts.values()), completion

    @property
    def choices_seen(self) -> int:
        return len(self._running)

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """Take bytes from upstream; return (bytes to send the client now, first token among them)."""
        pending = self._pending
        if not pending and self.first_token_seen and self.one_choice and self._rewrite and self._held is None \
                and data.find(EVENT_END) == len(data) - 2:
            # Most reads of a stream after its first token: one whole token chunk of one choice.
            out = self._token_event(data)
            if out is not None:
                return out, False
        if pending:
            if data.find(EVENT_END) < 0 and not (data[:1] == b"\n" and pending[-1][-1:] == b"\n"):
                self._keep(data)  # still inside one long event: joined once, when it ends
                return b"", False
            pending.append(data)
            data = b"".join(pending)
            pending.clear()
            self._pending_bytes = 0
        end = data.rfind(EVENT_END) + 2
        if end < 2:
            self._keep(data)
            return b"", False
        if end != len(data):
            self._keep(data[end:])
            data = data[:end]
        first_before = self.first_token_seen
        # This runs for every chunk of every stream: the usual read is one whole event, handled
        # without splitting and joining.
        if data.find(EVENT_END) == end - 2:
            out = self._event(data[:-2])
        else:
            out = b"".join([self._event(event) for event in data.split(EVENT_END) if event])
        return (out if self._rewrite else data), (self.first_token_seen and not first_before)

    def _token_event(self, data: bytes) -> bytes | None:
        """``_event``'s answer for a plain token chunk (one event, its blank line included), in
        fewer steps; None for anything else (a finish, the usage-only chunk, nested usage, text
        that is not ASCII), which ``_event`` handles."""
        cut = data.rfind(_USAGE)
        if cut < 0:
            return None
        begin = cut + len(_USAGE)
        usage_end = data.find(b"}", begin)
        if usage_end < 0 or data.find(b"{", begin + 1, usage_end) >= 0:
            return None
        at = data.find(_CHOICES, 0, cut)
        if at < 0 or data[at + len(_CHOICES)] == 0x5D or data.find(_FINISH, at, cut) >= 0 or not data.isascii():
            return None  # 0x5D: "]", the usage-only chunk
        self.events += 1
        self._running[0] = data[begin : usage_end + 1]
        return data[:cut] + data[usage_end + 1 :]

    def _keep(self, piece: bytes) -> None:
        self._pending.append(piece)
        self._pending_bytes += len(piece)
        if self._pending_bytes > MAX_EVENT_BYTES:
            raise StreamFormatError(f"the engine sent an event longer than {MAX_EVENT_BYTES} bytes")

    def _event(self, event: bytes) -> bytes:
        """Learn from one event (without its blank line); return what the client gets for it."""
        self.events += 1
        if event == DONE:
            self.done = True
            return self._release_held() + DONE + EVENT_END
        if not event.isascii():  # vLLM sends non-ASCII text as raw UTF-8; anything else is broken
            try:
                event.decode()
            except UnicodeDecodeError as exc:
                raise StreamFormatError(f"the engine's stream is not UTF-8 (byte {exc.start} of an event)") from None
        cut = event.rfind(_USAGE)
        final = False
        if cut >= 0:
            begin = cut + len(_USAGE)
            usage_end = event.find(b"}", begin)
            if usage_end < 0 or event.find(b"{", begin + 1, usage_end) >= 0:  # nested (token details)
                usage_end = _object_end(event, begin)
            usage = event[begin : usage_end + 1]
            at = event.find(_CHOICES)  # near the start: after id, object, created, model
            at = at + len(_CHOICES) if at >= 0 else len(event)
            final = event[at : at + 1] == b"]"  # vLLM's usage-only chunk: "choices":[]
            if final:
                self.final_usage = usage
            elif self.one_choice:
                self._running[0] = usage
            else:
                index = 0
                if event.startswith(_INDEX, at):
                    digits = event[at + len(_INDEX) : event.find(b",", at + len(_INDEX), at + 20)]
                    index = int(digits) if digits.isdigit() else 0
                running = self._running
                if index not in running and len(running) >= MAX_CHOICES:
                    raise StreamFormatError(f"the engine's stream has more than {MAX_CHOICES} choices")
                running[index] = usage
            if not self.first_token_seen and not final and not _ZERO_COMPLETION.search(usage):
                self.first_token_seen = True
        elif not self.first_token_seen and _carries_token(event):
            self.first_token_seen = True
        finish_at = event.find(_FINISH)
        if finish_at >= 0 and self.finish_reason is None:
            start = finish_at + len(_FINISH)
            end = event.find(b'"', start, start + 64)
            self.finish_reason = event[start:end].decode() if end > start else None
        if not self._rewrite:
            return b""  # the caller passes the bytes through as they came
        if cut >= 0:
            if final:
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
    """Index of the ``}`` closing the JSON object that opens at ``start`` (one pass: an engine's
    deeply nested object must not cost a scan per level)."""
    depth = 0
    for brace in _BRACE.finditer(data, start):
        depth += 1 if brace[0] == b"{" else -1
        if depth == 0:
            return brace.start()
    return len(data) - 1


def _carries_token(event: bytes) -> bool:
    # Chat: the first chunk carries only the role and empty content; a token chunk has text.
    # Completions: every chunk's "text" is a token.
    if b'"content":"' in event:
        return b'"content":""' not in event
    if b'"text":"' in event:
        return b'"text":""' not in event
    return False
