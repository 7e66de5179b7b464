"""vLLM's OpenAI Responses API (``/v1/responses``): its request, its objects, its SSE events.

Captured from vLLM 0.32 (tests/engines/VLLM_WIRE_FORMAT.md, "Responses"). A response object is
``model_dump()`` of vLLM's ``ResponsesResponse`` (every field, in declaration order); streamed,
each event is ``event: <type>\\ndata: <compact JSON>\\n\\n`` and the stream ends with the
``response.completed`` event, which carries the usage (no ``[DONE]``).

Responses are kept in memory by the engine that made them (vLLM with
``VLLM_ENABLE_RESPONSES_API_STORE=1``): ``GET /v1/responses/{id}``, ``.../cancel`` and
``previous_response_id`` only work on that engine; any other answers 404.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import text
from .protocol import Prompt
from .validation import (
    NOT_A_DICT,
    ApiError,
    FieldError,
    Fields,
    UnionError,
    as_bool,
    as_float,
    as_int,
    as_str,
    validation_error,
)
from .wire import dumps


@dataclass(slots=True)
class ResponsesRequest:
    model: str | None
    messages: list[tuple[str, str]]  # this request's turns, instructions first
    instructions: str | None
    max_output_tokens: int | None
    stream: bool
    store: bool
    previous_response_id: str | None
    temperature: float | None
    top_p: float | None
    tools: list[Any]
    tool_choice: Any
    metadata: Any
    background: bool
    user: str | None
    seed: int | None = None
    ignore_eos: bool = False


@dataclass(slots=True)
class StoredResponse:
    body: dict[str, Any]  # the response object as last sent
    conversation: list[tuple[str, str]] = field(default_factory=list)  # prompt turns + the reply


def _input(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [("user", value)]
    if not isinstance(value, list):
        raise UnionError([
            FieldError("string_type", "Input should be a valid string", (), value),
            FieldError("list_type", "Input should be a valid list", (), value),
        ])  # fmt: skip
    turns = []
    for item in value:
        if isinstance(item, dict) and isinstance(item.get("role"), str):
            turns.append((item["role"], _content_text(item.get("content"))))
    return turns


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def parse(data: Any) -> ResponsesRequest:
    if not isinstance(data, dict):
        raise validation_error([FieldError("model_attributes_type", NOT_A_DICT, (), data)])
    fields = Fields(data)
    background = bool(fields.get("background", as_bool, False))
    if "input" not in data:
        # One of vLLM's "before" validators adds a key first, so pydantic counts one more.
        fields.errors.append(FieldError("missing", "Field required", ("input",), {**data, "": None}))
    turns = fields.get("input", _input, [], nullable=False)
    instructions = fields.get("instructions", as_str)
    max_output_tokens = fields.get("max_output_tokens", as_int)
    model = fields.get("model", as_str)
    previous = fields.get("previous_response_id", as_str)
    store = fields.get("store", as_bool, True)
    stream = fields.get("stream", as_bool, False)
    temperature = fields.get("temperature", as_float)
    top_p = fields.get("top_p", as_float)
    user = fields.get("user", as_str)
    seed = fields.get("seed", as_int)  # vLLM's sampling extensions, declared last
    ignore_eos = fields.get("ignore_eos", as_bool, False)
    fields.raise_if_any()
    messages = ([("system", instructions)] if instructions else []) + list(turns)
    tools = data.get("tools") or []
    return ResponsesRequest(
        model=model,
        messages=messages,
        instructions=instructions,
        max_output_tokens=max_output_tokens,
        stream=bool(stream),
        store=True if store is None else bool(store),
        previous_response_id=previous,
        temperature=temperature,
        top_p=top_p,
        tools=tools,
        tool_choice=data.get("tool_choice", "auto" if tools else "none"),
        metadata=data.get("metadata"),
        background=background,
        user=user,
        seed=seed,
        ignore_eos=bool(ignore_eos),
    )


def prompt_of(conversation: list[tuple[str, str]]) -> Prompt:
    return Prompt(
        key=("chat", tuple(conversation)),
        tokens=text.count_chat_tokens(conversation),
        chars=text.chat_chars(conversation),
    )


def not_found(response_id: str) -> ApiError:
    return ApiError(404, "invalid_request_error", f"Response with id '{response_id}' not found.", "response_id")


def cannot_cancel() -> ApiError:
    return ApiError(400, "invalid_request_error", "Cannot cancel a synchronous response.", "response_id")


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": 0,
            "cache_write_tokens": 0,
            "input_tokens_per_turn": [],
            "cached_tokens_per_turn": [],
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {
            "reasoning_tokens": 0,
            "tool_output_tokens": 0,
            "output_tokens_per_turn": [],
            "tool_output_tokens_per_turn": [],
        },
        "total_tokens": input_tokens + output_tokens,
    }


def message_item(item_id: str, content: str | None, status: str) -> dict[str, Any]:
    """An assistant message output item; ``content`` None: just opened (no parts yet).

    An empty reply has no parts either, as vLLM writes it (``[...] if final_output.text else []``).
    """
    parts = [] if not content else [
        {"annotations": [], "text": content, "type": "output_text", "logprobs": None}
    ]  # fmt: skip
    return {"id": item_id, "content": parts, "role": "assistant", "status": status, "type": "message", "phase": None}


def response_object(
    request: ResponsesRequest,
    *,
    response_id: str,
    created_at: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage_body: dict[str, Any] | None,
    incomplete: bool = False,
) -> dict[str, Any]:
    return {
        "id": response_id,
        "created_at": created_at,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": request.instructions,
        "metadata": request.metadata,
        "model": model,
        "object": "response",
        "output": output,
        "parallel_tool_calls": True,
        "temperature": 1.0 if request.temperature is None else request.temperature,
        "tool_choice": request.tool_choice,
        "tools": request.tools,
        "top_p": 1.0 if request.top_p is None else request.top_p,
        "background": request.background,
        "max_output_tokens": request.max_output_tokens,
        "max_tool_calls": None,
        "previous_response_id": request.previous_response_id,
        "prompt": None,
        "reasoning": None,
        "service_tier": "auto",
        "status": status,
        "text": None,
        "top_logprobs": None,
        "truncation": "disabled",
        "usage": usage_body,
        "user": request.user,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "input_messages": None,
        "output_messages": None,
    }


class EventWriter:
    """Numbers and frames one stream's events: ``event: <type>`` then its ``data:`` line."""

    __slots__ = ("sequence", "item_id")

    def __init__(self, item_id: str) -> None:
        self.sequence = 0
        self.item_id = item_id

    def _event(self, kind: str, head: str, tail: str = "") -> bytes:
        """``head`` and ``tail``: the JSON members before and after ``sequence_number``."""
        n = self.sequence
        self.sequence += 1
        sep = "," if tail else ""
        return f'event: {kind}\ndata: {{{head},"sequence_number":{n}{sep}{tail},"type":"{kind}"}}\n\n'.encode()

    def response(self, kind: str, body: dict[str, Any]) -> bytes:
        return self._event(kind, f'"response":{dumps(body)}')

    def item(self, kind: str, item: dict[str, Any]) -> bytes:
        return self._event(kind, f'"item":{dumps(item)},"output_index":0')

    def part(self, kind: str, content: str | None) -> bytes:
        logprobs = "[]" if content is None else "null"
        part = f'{{"annotations":[],"text":{dumps(content or "")},"type":"output_text","logprobs":{logprobs}}}'
        return self._event(kind, f'"content_index":0,"item_id":"{self.item_id}","output_index":0,"part":{part}')

    def delta(self, text_json: str) -> bytes:
        """One token's text, already JSON-encoded (the engine never encodes per token)."""
        return self._event(
            "response.output_text.delta",
            f'"content_index":0,"delta":{text_json},"item_id":"{self.item_id}","logprobs":[],"output_index":0',
        )

    def text_done(self, content: str) -> bytes:
        return self._event(
            "response.output_text.done",
            f'"content_index":0,"item_id":"{self.item_id}","logprobs":[],"output_index":0',
            f'"text":{dumps(content)}',
        )
