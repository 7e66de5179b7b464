"""vLLM's bytes on the wire: SSE chunks and JSON bodies, key for key.

vLLM builds stream chunks with pydantic ``model_dump_json(exclude_unset=True)``, so a chunk
holds exactly the fields its code passed (``null`` included), in the class's field order,
with no spaces; non-streamed bodies are ``model_dump()`` through Starlette's JSONResponse
(every field, compact separators). What each kind of chunk carries (vLLM 0.32):

    chat, first chunk    choices[{index, delta{role, content:""}, logprobs, finish_reason}],
                         [usage], prompt_token_ids, prompt_text
    chat, token          choices[{index, delta{content}, logprobs, finish_reason, token_ids}], [usage]
    chat, last token     choices[{..., finish_reason, stop_reason, token_ids}], [usage | system_fingerprint]
    completion, token    choices[{index, text, logprobs, finish_reason, stop_reason,
                         prompt_token_ids, token_ids}], [usage | system_fingerprint on the last]
    usage-only chunk     choices[], usage{prompt_tokens, total_tokens, completion_tokens},
                         system_fingerprint   (only with stream_options.include_usage)

``usage`` on every chunk only with ``continuous_usage_stats``; the fingerprint goes on the
last token chunk only when no usage-only chunk follows. The stream ends ``data: [DONE]``.
Each chunk is an f-string over pre-encoded parts: no JSON encoder runs per token.
"""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class StreamFramer:
    """Builds one streamed request's chunks."""

    __slots__ = ("_head", "_tail_usage", "_chat", "_continuous", "_fingerprint_tail", "_usage_head")

    def __init__(
        self,
        *,
        chat: bool,
        request_id: str,
        created: int,
        model: str,
        fingerprint: str,
        include_usage: bool,
        continuous_usage: bool,
    ) -> None:
        obj = "chat.completion.chunk" if chat else "text_completion"
        prefix = f'data: {{"id":{dumps(request_id)},"object":"{obj}","created":{created},"model":{dumps(model)},'
        self._head = prefix + '"choices":[{"index":'
        self._usage_head = prefix + '"choices":[],"usage":'
        self._chat = chat
        self._continuous = continuous_usage
        # The fingerprint marks the true last message: the usage chunk if one follows.
        self._fingerprint_tail = "" if include_usage else f',"system_fingerprint":{dumps(fingerprint)}'
        self._tail_usage = f',"system_fingerprint":{dumps(fingerprint)}}}\n\n'

    def _usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        if not self._continuous:
            return ""
        total = prompt_tokens + completion_tokens
        # Chat passes completion_tokens_details explicitly (as None), completions do not.
        details = ',"completion_tokens_details":null' if self._chat else ""
        return (
            f',"usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{total},'
            f'"completion_tokens":{completion_tokens}{details}}}'
        )

    def role(self, index: int, role: str, prompt_tokens: int) -> bytes:
        """Chat only: the first chunk of each choice, sent with its first token."""
        return (
            f'{self._head}{index},"delta":{{"role":{dumps(role)},"content":""}},"logprobs":null,'
            f'"finish_reason":null}}]{self._usage(prompt_tokens, 0)},"prompt_token_ids":null,"prompt_text":null}}\n\n'
        ).encode()

    def token(self, index: int, text_json: str, prompt_tokens: int, completion_tokens: int) -> bytes:
        usage = self._usage(prompt_tokens, completion_tokens)
        if self._chat:
            choice = f'"delta":{{"content":{text_json}}},"logprobs":null,"finish_reason":null,"token_ids":null'
        else:
            choice = (
                f'"text":{text_json},"logprobs":null,"finish_reason":null,"stop_reason":null,'
                '"prompt_token_ids":null,"token_ids":null'
            )
        return f"{self._head}{index},{choice}}}]{usage}}}\n\n".encode()

    def last(self, index: int, text_json: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
        tail = self._usage(prompt_tokens, completion_tokens) or self._fingerprint_tail
        if self._chat:
            choice = (
                f'"delta":{{"content":{text_json}}},"logprobs":null,"finish_reason":"{finish_reason}",'
                '"stop_reason":null,"token_ids":null'
            )
        else:
            choice = (
                f'"text":{text_json},"logprobs":null,"finish_reason":"{finish_reason}","stop_reason":null,'
                '"prompt_token_ids":null,"token_ids":null'
            )
        return f"{self._head}{index},{choice}}}]{tail}}}\n\n".encode()

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        total = prompt_tokens + completion_tokens
        usage = f'{{"prompt_tokens":{prompt_tokens},"total_tokens":{total},"completion_tokens":{completion_tokens}}}'
        return f"{self._usage_head}{usage}{self._tail_usage}".encode()


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


def chat_response(
    *,
    request_id: str,
    created: int,
    model: str,
    fingerprint: str,
    role: str,
    choices: list[tuple[str, str]],  # (text, finish_reason) per choice
    prompt_tokens: int,
    completion_tokens: int,
) -> bytes:
    body = {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {
                    "role": role,
                    "content": content,
                    "refusal": None,
                    "annotations": None,
                    "audio": None,
                    "function_call": None,
                    "reasoning": None,
                },
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
                "token_ids": None,
                "routed_experts": None,
            }
            for i, (content, finish_reason) in enumerate(choices)
        ],
        "service_tier": None,
        "system_fingerprint": fingerprint,
        "usage": usage_body(prompt_tokens, completion_tokens),
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "prompt_text": None,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }
    return dumps(body).encode()


def completion_response(
    *,
    request_id: str,
    created: int,
    model: str,
    fingerprint: str,
    choices: list[tuple[str, str]],
    prompt_tokens: int,
    completion_tokens: int,
) -> bytes:
    body = {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": i,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
                "token_ids": None,
                "prompt_logprobs": None,
                "prompt_token_ids": None,
                "routed_experts": None,
            }
            for i, (text, finish_reason) in enumerate(choices)
        ],
        "service_tier": None,
        "system_fingerprint": fingerprint,
        "usage": usage_body(prompt_tokens, completion_tokens),
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }
    return dumps(body).encode()


def model_list(*, model: str, root: str, max_model_len: int, created: int, permission_id: str) -> bytes:
    permission = {
        "id": permission_id,
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    card = {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root,
        "parent": None,
        "max_model_len": max_model_len,
        "permission": [permission],
    }
    return dumps({"object": "list", "data": [card]}).encode()
