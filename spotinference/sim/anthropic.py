"""vLLM's Anthropic Messages API (``/v1/messages``, ``/v1/messages/count_tokens``).

Captured from vLLM 0.32 (tests/engines/VLLM_WIRE_FORMAT.md, "Messages"). vLLM serves it by
turning the request into a chat completion (streamed with continuous usage) and converting the
chunks, so: ``message_start`` comes with the first token and carries the prompt's
``input_tokens`` (``output_tokens`` 0); one ``content_block_delta`` per non-empty token;
``content_block_stop``, then ``message_delta`` with the stop reason and the final usage, then
``message_stop``. Every event is ``event: <type>\\ndata: <compact JSON>\\n\\n``; no ``[DONE]``.

Errors: request-schema (pydantic) errors keep vLLM's OpenAI shape; vLLM's own errors (unknown
model, token limits) come Anthropic-shaped: ``{"type":"error","error":{"type":..,"message":..}}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import text
from .protocol import Prompt
from .validation import NOT_A_DICT, FieldError, Fields, as_bool, as_float, as_int, as_str, validation_error
from .wire import dumps

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


@dataclass(slots=True)
class MessagesRequest:
    model: str | None
    messages: list[tuple[str, str]]  # the system prompt first, as a "system" turn
    max_tokens: int
    stream: bool
    temperature: float | None
    top_p: float | None

    @property
    def prompt(self) -> Prompt:
        return Prompt(
            key=("chat", tuple(self.messages)),
            tokens=text.count_chat_tokens(self.messages),
            chars=text.chat_chars(self.messages),
        )


def _blocks_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))
    return ""


def _messages(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        raise FieldError("list_type", "Input should be a valid list")
    return [
        (m["role"], _blocks_text(m.get("content")))
        for m in value
        if isinstance(m, dict) and isinstance(m.get("role"), str)
    ]


def _positive(value: Any) -> int:
    number = as_int(value)
    if number <= 0:
        # pydantic's field_validator error, with the input as the message shows it.
        raise FieldError("value_error", "Value error, max_tokens must be positive", (), str(value),
                         {"error": _Repr("ValueError('max_tokens must be positive')")})  # fmt: skip
    return number


class _Repr(str):
    """A ctx value that pydantic prints as the exception's repr, not as a quoted string."""

    def __repr__(self) -> str:
        return str(self)


def _fields(data: Any) -> tuple[Fields, str | None, list[tuple[str, str]]]:
    if not isinstance(data, dict):
        raise validation_error([FieldError("model_attributes_type", NOT_A_DICT, (), data)])
    fields = Fields(data)
    model = fields.get("model", as_str, nullable=False, required=True)
    messages = fields.get("messages", _messages, [], nullable=False, required=True)
    system = data.get("system")
    turns = ([("system", _blocks_text(system))] if system else []) + list(messages or [])
    return fields, model, turns


def parse(data: Any) -> MessagesRequest:
    fields, model, turns = _fields(data)
    max_tokens = fields.get("max_tokens", _positive, 0, nullable=False, required=True)
    stream = fields.get("stream", as_bool, False)
    temperature = fields.get("temperature", as_float)
    top_p = fields.get("top_p", as_float)
    fields.raise_if_any()
    return MessagesRequest(
        model=model,
        messages=turns,
        max_tokens=max_tokens,
        stream=bool(stream),
        temperature=temperature,
        top_p=top_p,
    )


def parse_count(data: Any) -> tuple[str | None, Prompt]:
    fields, model, turns = _fields(data)
    fields.raise_if_any()
    request = MessagesRequest(model, turns, 1, False, None, None)
    return request.model, request.prompt


def count_tokens_body(input_tokens: int) -> bytes:
    return dumps({"input_tokens": input_tokens, "context_management": {"original_input_tokens": input_tokens}}).encode()


def message_body(*, message_id: str, model: str, content: str, finish_reason: str, input_tokens: int,
                 output_tokens: int) -> bytes:  # fmt: skip
    body = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": content}],
        "model": model,
        "stop_reason": STOP_REASONS[finish_reason],
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }
    return dumps(body).encode()


def _event(kind: str, data: str) -> bytes:
    return f"event: {kind}\ndata: {data}\n\n".encode()


def message_start(message_id: str, model: str, input_tokens: int) -> bytes:
    message = (
        f'{{"id":{dumps(message_id)},"type":"message","role":"assistant","content":[],"model":{dumps(model)},'
        f'"stop_reason":null,"stop_sequence":null,"usage":{{"input_tokens":{input_tokens},"output_tokens":0}}}}'
    )
    return _event("message_start", f'{{"type":"message_start","message":{message}}}')


BLOCK_START = _event(
    "content_block_start", '{"type":"content_block_start","content_block":{"type":"text","text":""},"index":0}'
)
BLOCK_STOP = _event("content_block_stop", '{"type":"content_block_stop","index":0}')
MESSAGE_STOP = _event("message_stop", '{"type":"message_stop"}')


def block_delta(text_json: str) -> bytes:
    return _event(
        "content_block_delta",
        f'{{"type":"content_block_delta","delta":{{"type":"text_delta","text":{text_json}}},"index":0}}',
    )


def message_delta(finish_reason: str, input_tokens: int, output_tokens: int) -> bytes:
    return _event(
        "message_delta",
        f'{{"type":"message_delta","delta":{{"stop_reason":"{STOP_REASONS[finish_reason]}","stop_sequence":null}},'
        f'"usage":{{"input_tokens":{input_tokens},"output_tokens":{output_tokens}}}}}',
    )
