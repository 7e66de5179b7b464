"""The requests vLLM's newer routes were captured with, and how to compare two answers to them.

One list drives three things: ``python -m tests.engines.routes CHAT_URL POOLING_URL`` captures a
real vLLM's answers into ``vllm_routes.json`` (beside this file); tests/test_sim_engine_routes.py
checks the simulator against that file, and (slow) against a live real vLLM.

Answers are compared by *shape*: every key in its order, every value's JSON type, list lengths,
SSE event names and their order (runs of the same event collapsed, since how many tokens ride
in one delta varies). Error answers carry no random parts, so they are compared byte for byte.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

CAPTURES = Path(__file__).with_name("vllm_routes.json")
HELLO = [{"role": "user", "content": "hello"}]


@dataclass(frozen=True)
class Route:
    name: str
    runner: str  # "generate" (tiny-chat) or "pooling" (tiny-embed)
    method: str
    path: str
    body: str | None  # raw, so malformed JSON can be sent too
    exact: bool = False  # errors: the same bytes, not just the same shape


def _j(value: Any) -> str:
    return json.dumps(value)


# vLLM answers an empty reply with no content parts at all, so a Responses answer's shape
# depends on the random model's text: an EOS first (or only special tokens) leaves it empty.
# A fixed seed and ignore_eos make real vLLM write the same non-empty text on every run. A
# streamed Messages answer likewise has no content block when the text is empty; that API takes
# neither seed nor ignore_eos, so it is pinned by greedy sampling (temperature 0) of a prompt
# whose greedy reply is visible text ("hello"'s greedy reply is four special tokens: empty).
STORY = [{"role": "user", "content": "tell me a story"}]
PINNED = {"seed": 7, "ignore_eos": True}

ROUTES = [
    # --- Responses
    Route("responses", "generate", "POST", "/v1/responses", _j({"model": "tiny-chat", "input": "hello", "max_output_tokens": 4, **PINNED})),
    Route("responses_stream", "generate", "POST", "/v1/responses",
          _j({"model": "tiny-chat", "input": "hello", "max_output_tokens": 4, "stream": True, **PINNED})),
    Route("responses_instructions", "generate", "POST", "/v1/responses",
          _j({"model": "tiny-chat", "input": HELLO, "instructions": "be brief", "max_output_tokens": 2, **PINNED})),
    Route("responses_missing_input", "generate", "POST", "/v1/responses", _j({"model": "tiny-chat"}), exact=True),
    Route("responses_bad_json", "generate", "POST", "/v1/responses", '{"model":', exact=True),
    Route("responses_unknown_model", "generate", "POST", "/v1/responses",
          _j({"model": "nope", "input": "hi", "max_output_tokens": 4}), exact=True),
    Route("responses_too_many_tokens", "generate", "POST", "/v1/responses",
          _j({"model": "tiny-chat", "input": "hi", "max_output_tokens": 600}), exact=True),
    Route("responses_zero_tokens", "generate", "POST", "/v1/responses",
          _j({"model": "tiny-chat", "input": "hi", "max_output_tokens": 0}), exact=True),
    Route("responses_unknown_previous", "generate", "POST", "/v1/responses",
          _j({"model": "tiny-chat", "input": "hi", "max_output_tokens": 2, "previous_response_id": "resp_nope"}),
          exact=True),
    Route("responses_get_unknown", "generate", "GET", "/v1/responses/resp_nope", None, exact=True),
    Route("responses_cancel_unknown", "generate", "POST", "/v1/responses/resp_nope/cancel", None, exact=True),
    # --- Anthropic Messages
    Route("messages", "generate", "POST", "/v1/messages", _j({"model": "tiny-chat", "max_tokens": 4, "messages": HELLO})),
    Route("messages_stream", "generate", "POST", "/v1/messages",
          _j({"model": "tiny-chat", "max_tokens": 4, "messages": STORY, "stream": True, "temperature": 0})),
    Route("messages_system", "generate", "POST", "/v1/messages",
          _j({"model": "tiny-chat", "max_tokens": 2, "system": "be brief", "messages": HELLO})),
    Route("messages_count_tokens", "generate", "POST", "/v1/messages/count_tokens",
          _j({"model": "tiny-chat", "messages": HELLO}), exact=True),
    Route("messages_unknown_model", "generate", "POST", "/v1/messages",
          _j({"model": "nope", "max_tokens": 4, "messages": HELLO}), exact=True),
    Route("messages_missing_max_tokens", "generate", "POST", "/v1/messages",
          _j({"model": "tiny-chat", "messages": HELLO}), exact=True),
    Route("messages_missing_everything", "generate", "POST", "/v1/messages", _j({"model": "tiny-chat"}), exact=True),
    Route("messages_zero_max_tokens", "generate", "POST", "/v1/messages",
          _j({"model": "tiny-chat", "max_tokens": 0, "messages": HELLO}), exact=True),
    Route("messages_too_many_tokens", "generate", "POST", "/v1/messages",
          _j({"model": "tiny-chat", "max_tokens": 600, "messages": HELLO}), exact=True),
    Route("messages_bad_json", "generate", "POST", "/v1/messages", '{"model":', exact=True),
    Route("count_tokens_unknown_model", "generate", "POST", "/v1/messages/count_tokens",
          _j({"model": "nope", "messages": HELLO}), exact=True),
    # --- tokenizer
    Route("tokenize_prompt", "generate", "POST", "/tokenize", _j({"model": "tiny-chat", "prompt": "hello world"})),
    Route("tokenize_messages", "generate", "POST", "/tokenize", _j({"model": "tiny-chat", "messages": HELLO})),
    Route("tokenize_missing", "generate", "POST", "/tokenize", _j({"model": "tiny-chat"}), exact=True),
    Route("tokenize_unknown_model", "generate", "POST", "/tokenize", _j({"model": "nope", "prompt": "hi"}), exact=True),
    Route("detokenize", "generate", "POST", "/detokenize", _j({"model": "tiny-chat", "tokens": [10, 200, 300]})),
    Route("detokenize_missing", "generate", "POST", "/detokenize", _j({"model": "tiny-chat"}), exact=True),
    # --- routes a chat model does not serve
    Route("models_by_id", "generate", "GET", "/v1/models/tiny-chat", None, exact=True),
    Route("embeddings_on_chat", "generate", "POST", "/v1/embeddings", _j({"model": "tiny-chat", "input": "hi"}), exact=True),
    Route("transcriptions_on_chat", "generate", "POST", "/v1/audio/transcriptions", None, exact=True),
    # --- pooling
    Route("embeddings", "pooling", "POST", "/v1/embeddings", _j({"model": "tiny-embed", "input": "hello world"})),
    Route("embeddings_list", "pooling", "POST", "/v1/embeddings", _j({"model": "tiny-embed", "input": ["hello", "hello world"]})),
    Route("embeddings_ids", "pooling", "POST", "/v1/embeddings", _j({"model": "tiny-embed", "input": [77, 356]})),
    Route("embeddings_id_lists", "pooling", "POST", "/v1/embeddings", _j({"model": "tiny-embed", "input": [[77, 356], [77]]})),
    Route("embeddings_base64", "pooling", "POST", "/v1/embeddings",
          _j({"model": "tiny-embed", "input": "hello", "encoding_format": "base64"})),
    Route("embeddings_missing_input", "pooling", "POST", "/v1/embeddings", _j({"model": "tiny-embed"}), exact=True),
    Route("embeddings_unknown_model", "pooling", "POST", "/v1/embeddings", _j({"model": "nope", "input": "hi"}), exact=True),
    Route("embeddings_empty", "pooling", "POST", "/v1/embeddings", _j({"model": "tiny-embed", "input": ""}), exact=True),
    Route("embeddings_no_inputs", "pooling", "POST", "/v1/embeddings", _j({"model": "tiny-embed", "input": []}), exact=True),
    Route("embeddings_dimensions", "pooling", "POST", "/v1/embeddings",
          _j({"model": "tiny-embed", "input": "hi", "dimensions": 8}), exact=True),
    Route("embeddings_bad_json", "pooling", "POST", "/v1/embeddings", '{"model":', exact=True),
    Route("score", "pooling", "POST", "/v1/score",
          _j({"model": "tiny-embed", "text_1": "hello", "text_2": ["hello world", "the cost"]})),
    Route("score_alias", "pooling", "POST", "/score", _j({"model": "tiny-embed", "text_1": "hello", "text_2": "hello world"})),
    Route("score_queries", "pooling", "POST", "/v1/score", _j({"model": "tiny-embed", "queries": "hello", "documents": ["x"]})),
    Route("score_missing", "pooling", "POST", "/v1/score", _j({"model": "tiny-embed"}), exact=True),
    Route("score_lengths", "pooling", "POST", "/v1/score",
          _j({"model": "tiny-embed", "text_1": ["a", "b"], "text_2": ["c", "d", "e"]}), exact=True),
    Route("rerank", "pooling", "POST", "/v1/rerank",
          _j({"model": "tiny-embed", "query": "hello", "documents": ["hello world", "the cost", "spot gpu"], "top_n": 2})),
    Route("rerank_alias", "pooling", "POST", "/rerank",
          _j({"model": "tiny-embed", "query": "hello", "documents": ["hello world", "the cost"]})),
    Route("rerank_v2", "pooling", "POST", "/v2/rerank",
          _j({"model": "tiny-embed", "query": "hello", "documents": ["hello world", "the cost"]})),
    Route("rerank_missing", "pooling", "POST", "/v1/rerank", _j({"model": "tiny-embed"}), exact=True),
    Route("rerank_no_documents", "pooling", "POST", "/v1/rerank",
          _j({"model": "tiny-embed", "query": "hello", "documents": []}), exact=True),
    Route("rerank_unknown_model", "pooling", "POST", "/v1/rerank",
          _j({"model": "nope", "query": "q", "documents": ["d"]}), exact=True),
    Route("tokenize_on_pooling", "pooling", "POST", "/tokenize", _j({"model": "tiny-embed", "prompt": "hello world"})),
    # --- routes a pooling model does not serve
    Route("chat_on_pooling", "pooling", "POST", "/v1/chat/completions",
          _j({"model": "tiny-embed", "messages": HELLO}), exact=True),
    Route("responses_on_pooling", "pooling", "POST", "/v1/responses", _j({"model": "tiny-embed", "input": "hi"}), exact=True),
    Route("messages_on_pooling", "pooling", "POST", "/v1/messages",
          _j({"model": "tiny-embed", "max_tokens": 3, "messages": HELLO}), exact=True),
]


def call(client: httpx.Client, route: Route) -> dict[str, Any]:
    """One exchange, recorded as the comparison needs it."""
    headers = {"content-type": "application/json"} if route.body is not None else {}
    response = client.request(route.method, route.path, content=route.body, headers=headers)
    return {
        "status": response.status_code,
        "content_type": response.headers.get("content-type"),
        "content_length": "content-length" in response.headers,
        "body": response.text,
    }


_EVENT = re.compile(r"event: ([a-z_.]+)\ndata: (.*)\n\n")


def sse_events(body: str) -> list[tuple[str, Any]]:
    """Parse an ``event:``/``data:`` stream; raise if any byte is outside that framing."""
    events, position = [], 0
    for match in _EVENT.finditer(body):
        if match.start() != position:
            raise AssertionError(f"unframed bytes at {position}: {body[position:match.start()]!r}")
        events.append((match.group(1), json.loads(match.group(2))))
        position = match.end()
    if position != len(body):
        raise AssertionError(f"unframed bytes at the end: {body[position:]!r}")
    return events


# Keys whose value's shape depends on whether the random model happened to emit EOS: a
# Responses object has {"reason": "max_output_tokens"} when the limit ended it, null otherwise.
DEPENDS_ON_EOS = {"incomplete_details"}


def shape(value: Any) -> Any:
    """Keys in order, JSON types, list lengths; the values themselves are dropped."""
    if isinstance(value, dict):
        return [[key, "eos-dependent" if key in DEPENDS_ON_EOS else shape(item)] for key, item in value.items()]
    if isinstance(value, list):
        return ["list", len(value), shape(value[0]) if value else None]
    if value is None:
        return "null"
    return type(value).__name__


def answer_shape(answer: dict[str, Any]) -> Any:
    """What must match between two engines' answers to the same route."""
    body = answer["body"]
    if answer["content_type"].startswith("text/event-stream"):
        collapsed: list[Any] = []
        for event, data in sse_events(body):
            item = [event, shape(data)]
            if not collapsed or collapsed[-1] != item:
                collapsed.append(item)
        content: Any = collapsed
    else:
        content = shape(json.loads(body))
    return [answer["status"], answer["content_type"], answer["content_length"], content]


def capture(chat_url: str, pooling_url: str) -> dict[str, Any]:
    urls = {"generate": chat_url, "pooling": pooling_url}
    out = {}
    for route in ROUTES:
        with httpx.Client(base_url=urls[route.runner], timeout=60) as client:
            out[route.name] = call(client, route)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m tests.engines.routes CHAT_URL POOLING_URL")
    CAPTURES.write_text(json.dumps(capture(sys.argv[1], sys.argv[2]), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {CAPTURES}")
