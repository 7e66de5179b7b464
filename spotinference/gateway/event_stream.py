"""Usage from the Responses, Messages and audio streams, learnt as their bytes pass unchanged.

Unlike chat (``sse.py``), the gateway adds nothing to these requests, so the client gets every
byte exactly as the engine sent it and the events are only read:

* Responses (``event: response.*``): the id from ``response.created``; the usage
  (``input_tokens``/``output_tokens``) from the terminal ``response.completed`` (or
  ``.incomplete``/``.failed``) event, after which vLLM ends the stream.
* Messages (``event: message_*``): ``input_tokens`` from ``message_start``, the totals from the
  last ``message_delta`` (vLLM's ``input_tokens`` excludes cached tokens, which it reports apart:
  they are added back, as vLLM's own prompt_tokens counts them); ``message_stop`` ends it.
* Audio: chat-like ``data:`` chunks, the usage on the last one, then ``data: [DONE]``.

An aborted stream bills what was seen: Messages' input tokens (output unknown: NULL); a
Responses stream carries no usage before its end, so both stay unknown.
"""

from __future__ import annotations

import json

from .sse import EVENT_END, MAX_EVENT_BYTES, MAX_TOKENS, StreamFormatError, UsageError, parse_usage

_RESPONSE_DONE = (b"event: response.completed", b"event: response.incomplete", b"event: response.failed")
_DATA = b"data: "


def _json_of(event: bytes) -> dict:
    at = event.find(_DATA)
    if at < 0:
        return {}
    try:
        data = json.loads(event[at + len(_DATA):])
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"an event the usage is read from is not JSON ({type(exc).__name__})") from None
    return data if isinstance(data, dict) else {}


def _count(usage: dict, key: str, *, optional: bool = False) -> int:
    value = usage.get(key)
    if optional and value is None:
        return 0
    if type(value) is not int or not 0 <= value <= MAX_TOKENS:
        raise UsageError(f"usage.{key} is {repr(value)[:40]}: expected a whole number from 0 to {MAX_TOKENS}")
    return value


def responses_usage(usage: object) -> tuple[int, int]:
    if not isinstance(usage, dict):
        raise UsageError(f"usage is a {type(usage).__name__}, not an object")
    return _count(usage, "input_tokens"), _count(usage, "output_tokens")


def pooling_usage(usage: object) -> int:
    """Embeddings, score and rerank: the prompt tokens pooled (nothing is generated)."""
    if not isinstance(usage, dict):
        raise UsageError(f"usage is a {type(usage).__name__}, not an object")
    return _count(usage, "prompt_tokens")


def messages_input(usage: dict) -> int:
    return (_count(usage, "input_tokens") + _count(usage, "cache_read_input_tokens", optional=True)
            + _count(usage, "cache_creation_input_tokens", optional=True))


def messages_usage(usage: object) -> tuple[int, int]:
    if not isinstance(usage, dict):
        raise UsageError(f"usage is a {type(usage).__name__}, not an object")
    return messages_input(usage), _count(usage, "output_tokens")


class EventStreamState:
    """The same questions the relay asks of chat's ``StreamState``, for the other streams."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.choices_per_prompt = 1
        self.one_choice = False
        self.done = False
        self.finish_reason: str | None = None
        self.first_token_seen = False
        self.response_id: str | None = None
        self._input: int | None = None  # Messages: from message_start
        self._final: tuple[int, int] | None = None
        self._error: UsageError | None = None
        self._pending = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """Every byte goes on at once; complete events are read as they close."""
        before = self.first_token_seen
        buffer = self._pending + data if self._pending else data
        end = buffer.rfind(EVENT_END)
        if end < 0:
            self._pending = buffer
        else:
            self._pending = buffer[end + 2:]
            for event in buffer[:end].split(EVENT_END):
                if event and not self.done:
                    self._event(event.strip(b"\r\n"))
        if len(self._pending) > MAX_EVENT_BYTES:
            raise StreamFormatError(f"the engine sent an event longer than {MAX_EVENT_BYTES} bytes")
        return data, self.first_token_seen and not before

    def _event(self, event: bytes) -> None:
        try:
            if self.kind == "responses":
                self._responses_event(event)
            elif self.kind == "messages":
                self._messages_event(event)
            else:
                self._audio_event(event)
        except UsageError as exc:
            self._error = self._error or exc

    def _responses_event(self, event: bytes) -> None:
        if event.startswith(_RESPONSE_DONE):
            response = _json_of(event).get("response") or {}
            self.done = True
            self.finish_reason = response.get("status") if isinstance(response.get("status"), str) else None
            if response.get("usage") is not None:
                self._final = responses_usage(response.get("usage"))
        elif self.response_id is None and event.startswith(b"event: response.created"):
            response = _json_of(event).get("response") or {}
            self.response_id = response.get("id") if isinstance(response.get("id"), str) else None
        elif not self.first_token_seen and event.startswith(b"event: response.output_text.delta"):
            self.first_token_seen = True

    def _messages_event(self, event: bytes) -> None:
        if event.startswith(b"event: message_start"):
            usage = (_json_of(event).get("message") or {}).get("usage")
            if isinstance(usage, dict):
                self._input = messages_input(usage)
        elif event.startswith(b"event: message_delta"):
            data = _json_of(event)
            stop = (data.get("delta") or {}).get("stop_reason")
            self.finish_reason = stop if isinstance(stop, str) else self.finish_reason
            if data.get("usage") is not None:
                self._final = messages_usage(data["usage"])
        elif event.startswith(b"event: message_stop"):
            self.done = True
        elif not self.first_token_seen and event.startswith(b"event: content_block_delta"):
            self.first_token_seen = True

    def _audio_event(self, event: bytes) -> None:
        if event == b"data: [DONE]":
            self.done = True
            return
        if b'"usage":{' in event:
            usage = _json_of(event).get("usage")
            self._final = parse_usage(json.dumps(usage).encode())
        if not self.first_token_seen and b'"content":"' in event and b'"content":""' not in event:
            self.first_token_seen = True

    def usage(self) -> tuple[int | None, int | None] | None:
        """(prompt, completion) tokens as the engine reported them; None if it reported none."""
        if self._error is not None:
            raise self._error
        if self._final is not None:
            return self._final
        return self.running_usage()

    def running_usage(self) -> tuple[int | None, int | None] | None:
        if self._input is not None:
            return self._input, None  # generated something, how much is unknown
        return None

    def drain(self) -> bytes:
        return b""  # nothing is held back
