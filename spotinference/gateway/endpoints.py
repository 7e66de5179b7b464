"""The routes vLLM serves beyond chat and completions, and what the gateway needs to know of each:
how to find the request's ``model``, whether and how it streams, and which names its usage uses.

Chat and completions are not here: they stay on the relay's hot path (``requests.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class Usage(Enum):
    """How an endpoint's answer reports the tokens it cost."""

    OPENAI = "openai"  # usage.prompt_tokens / completion_tokens
    RESPONSES = "responses"  # usage.input_tokens / output_tokens
    MESSAGES = "messages"  # usage.input_tokens (+ cache_*_input_tokens) / output_tokens
    POOLING = "pooling"  # usage.prompt_tokens; pooling generates nothing
    AUDIO = "audio"  # usage {"type": "duration", "seconds": N} (or tokens when streamed)
    NONE = "none"  # no inference (tokenizer only, or a stored answer read back): 0 and 0


class Body(Enum):
    JSON = "json"
    MULTIPART = "multipart"
    NONE = "none"  # GET, or a POST whose path names what it acts on


@dataclass(frozen=True)
class Endpoint:
    name: str  # the route as logged (ids shown as {id})
    method: str
    body: Body
    usage: Usage
    stream: str | None = None  # the stream's kind when the request asks for one (see event_stream.py)
    anthropic: bool = False  # errors in Anthropic's shape
    required: tuple[str, ...] = ()  # members (besides model) whose absence vLLM would refuse anyway
    by_response_id: bool = False  # routed to the node that served the response named in the path


RESPONSES = Endpoint("/v1/responses", "POST", Body.JSON, Usage.RESPONSES, stream="responses", required=("input",))
RESPONSE_GET = Endpoint("/v1/responses/{id}", "GET", Body.NONE, Usage.NONE, by_response_id=True)
RESPONSE_CANCEL = Endpoint("/v1/responses/{id}/cancel", "POST", Body.NONE, Usage.NONE, by_response_id=True)
MESSAGES = Endpoint("/v1/messages", "POST", Body.JSON, Usage.MESSAGES, stream="messages", anthropic=True,
                    required=("messages", "max_tokens"))
COUNT_TOKENS = Endpoint("/v1/messages/count_tokens", "POST", Body.JSON, Usage.NONE, anthropic=True,
                        required=("messages",))
AUDIO_STREAM = "audio"

_FIXED = {
    e.name: e for e in (
        RESPONSES, MESSAGES, COUNT_TOKENS,
        Endpoint("/v1/embeddings", "POST", Body.JSON, Usage.POOLING, required=("input",)),
        Endpoint("/tokenize", "POST", Body.JSON, Usage.NONE),
        Endpoint("/detokenize", "POST", Body.JSON, Usage.NONE, required=("tokens",)),
        Endpoint("/v1/score", "POST", Body.JSON, Usage.POOLING),
        Endpoint("/v1/rerank", "POST", Body.JSON, Usage.POOLING, required=("query", "documents")),
        Endpoint("/rerank", "POST", Body.JSON, Usage.POOLING, required=("query", "documents")),
        Endpoint("/v2/rerank", "POST", Body.JSON, Usage.POOLING, required=("query", "documents")),
        Endpoint("/v1/audio/transcriptions", "POST", Body.MULTIPART, Usage.AUDIO, stream=AUDIO_STREAM),
        Endpoint("/v1/audio/translations", "POST", Body.MULTIPART, Usage.AUDIO, stream=AUDIO_STREAM),
    )
}
# A response id as vLLM makes them (resp_ + hex) or as a client may send one: no "/" in it.
_RESPONSE_PATH = re.compile(r"/v1/responses/([^/]{1,256})(/cancel)?")


def match(path: str) -> tuple[Endpoint, str | None] | None:
    """The endpoint a path names, and the response id in it (for the two by-id routes)."""
    found = _FIXED.get(path)
    if found is not None:
        return found, None
    by_id = _RESPONSE_PATH.fullmatch(path)
    if by_id is None:
        return None
    return (RESPONSE_CANCEL if by_id.group(2) else RESPONSE_GET), by_id.group(1)


def routes() -> list[Endpoint]:
    """Every route in this table (the by-id ones once each, named with ``{id}``)."""
    return [*_FIXED.values(), RESPONSE_GET, RESPONSE_CANCEL]
