"""vLLM's pooling routes, as an embedding model serves them: embeddings, score, rerank.

Captured from vLLM 0.32 serving a causal LM with ``--runner pooling --convert embed``
(tests/engines/VLLM_WIRE_FORMAT.md, "Pooling"). Such a model also answers ``/score`` and
``/rerank`` as a bi-encoder: each text is embedded once and a score is the cosine of two
embeddings, so a request's ``prompt_tokens`` is the sum of its texts' tokens.

The simulator's embeddings are deterministic unit vectors derived from the text (the same text
always gets the same vector), sent as float32 values like vLLM's.
"""

from __future__ import annotations

import base64
import json
import math
import random
import struct
from dataclasses import dataclass
from typing import Any

from . import text
from .validation import (
    NOT_A_DICT,
    ApiError,
    FieldError,
    Fields,
    UnionError,
    as_int,
    as_str,
    validation_error,
    vllm_error,
)
from .wire import dumps

DIMENSIONS = 128  # the hidden size of tests/engines' tiny-embed
_ENCODINGS = ("float", "base64", "bytes", "bytes_only")
_ENCODING_MSG = "Input should be 'float', 'base64', 'bytes' or 'bytes_only'"


def not_found_model(model: str) -> ApiError:
    # The pooling routes word it without the aliases, and with no param (unlike chat's).
    return ApiError(404, "NotFoundError", f"The model `{model}` does not exist.", None)


def pooling_error(message: str) -> ApiError:
    return ApiError(400, "BadRequestError", message, None)


@dataclass(frozen=True, slots=True)
class Text:
    key: tuple[Any, ...]
    tokens: int
    value: str | None  # the text itself, when the input was text


def _text(value: str) -> Text:
    return Text(("text", value), text.count_tokens(value) + text.BOS_TOKENS if value else 0, value)


def _ids(value: list[int]) -> Text:
    return Text(("ids", tuple(value)), len(value), None)


def _inputs(value: Any) -> list[Text]:
    if isinstance(value, str):
        return [_text(value)]
    if isinstance(value, list):
        if all(isinstance(t, int) and not isinstance(t, bool) for t in value) and value:
            return [_ids(value)]
        if all(isinstance(p, str) for p in value):
            return [_text(p) for p in value]
        if all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in value):
            return [_ids(p) for p in value]
    raise FieldError("string_type", "Input should be a valid string")


def _encoding(value: Any) -> str:
    if value not in _ENCODINGS:
        raise FieldError("literal_error", _ENCODING_MSG, (), value,
                         {"expected": "'float', 'base64', 'bytes' or 'bytes_only'"})  # fmt: skip
    return value


@dataclass(slots=True)
class EmbeddingsRequest:
    model: str | None
    inputs: list[Text]
    encoding_format: str
    dimensions: int | None


# vLLM's embeddings request is a union of request types; with nothing to embed, each branch
# reports its missing field, in this order.
_EMBED_MISSING = ("input", "messages", "messages", "messages", "input", "messages", "input")


def parse_embeddings(data: Any) -> EmbeddingsRequest:
    if not isinstance(data, dict):
        raise validation_error([FieldError("model_attributes_type", NOT_A_DICT, (), data)])
    if "input" not in data:
        raise validation_error([FieldError("missing", "Field required", (name,), data) for name in _EMBED_MISSING])
    fields = Fields(data)
    model = fields.get("model", as_str)
    inputs = fields.get("input", _inputs, [], nullable=False)
    encoding = fields.get("encoding_format", _encoding, "float", nullable=False)
    dimensions = fields.get("dimensions", as_int)
    fields.raise_if_any()
    return EmbeddingsRequest(model, inputs, encoding, dimensions)


def check_embeddings(request: EmbeddingsRequest, served: str, max_model_len: int) -> None:
    if request.dimensions is not None:
        raise pooling_error(
            f"Model '{served}' does not support Matryoshka embeddings; dimensions must be unset "
            f"(received dimensions={request.dimensions})."
        )
    _check_texts(request.inputs, max_model_len)


def _check_texts(texts: list[Text], max_model_len: int) -> None:
    if not texts:
        raise pooling_error("You must pass at least one prompt")
    for t in texts:
        if t.tokens == 0:
            raise pooling_error("The decoder prompt cannot be empty")
        if t.tokens > max_model_len:
            raise vllm_error(
                f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
                f"contains at least {max_model_len + 1} input tokens, which exceeds this limit even without any "
                "output tokens. Please reduce the length of the input prompt.",
                "input_tokens",
                max_model_len + 1,
            )


def embed(seed: int, item: Text) -> list[float]:
    """A unit vector of float32 values, the same for the same text and engine seed."""
    rng = random.Random(text.stable_hash(seed, *item.key))
    raw = [rng.gauss(0.0, 1.0) for _ in range(DIMENSIONS)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return list(struct.unpack(f"<{DIMENSIONS}f", struct.pack(f"<{DIMENSIONS}f", *(v / norm for v in raw))))


def cosine(a: list[float], b: list[float]) -> float:
    # Both are unit vectors; rounded to float32 as vLLM's score tensor is.
    return struct.unpack("<f", struct.pack("<f", sum(x * y for x, y in zip(a, b, strict=True))))[0]


def usage(prompt_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


def embeddings_body(*, request_id: str, created: int, model: str, vectors: list[list[float]], encoding: str,
                    prompt_tokens: int) -> bytes:  # fmt: skip
    data = []
    for i, vector in enumerate(vectors):
        if encoding == "float":
            value: Any = vector
        else:
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"index": i, "object": "embedding", "embedding": value})
    body = {"id": request_id, "object": "list", "created": created, "model": model, "data": data,
            "usage": usage(prompt_tokens)}  # fmt: skip
    return dumps(body).encode()


# --- score and rerank ---------------------------------------------------------------------

_SCORE_PAIRS = (("queries", "documents"), ("data_1", "data_2"), ("text_1", "text_2"))
# The branches of vLLM's score request union, each reporting its missing fields.
_SCORE_MISSING = ("queries", "documents", "queries", "items", "data_1", "data_2", "text_1", "text_2")


def _texts(value: Any) -> list[Text]:
    if isinstance(value, str):
        return [_text(value)]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [_text(v) for v in value]
    raise UnionError([FieldError("string_type", "Input should be a valid string", (), value)])


@dataclass(slots=True)
class ScoreRequest:
    model: str | None
    queries: list[Text]
    documents: list[Text]
    top_n: int | None = None  # rerank only


def parse_score(data: Any) -> ScoreRequest:
    if not isinstance(data, dict):
        raise validation_error([FieldError("model_attributes_type", NOT_A_DICT, (), data)])
    for first, second in _SCORE_PAIRS:
        if first in data and second in data:
            fields = Fields(data)
            model = fields.get("model", as_str)
            queries = fields.get(first, _texts, [], nullable=False)
            documents = fields.get(second, _texts, [], nullable=False)
            fields.raise_if_any()
            return ScoreRequest(model, queries, documents)
    raise validation_error([FieldError("missing", "Field required", (name,), data) for name in _SCORE_MISSING])


def parse_rerank(data: Any) -> ScoreRequest:
    if not isinstance(data, dict):
        raise validation_error([FieldError("model_attributes_type", NOT_A_DICT, (), data)])
    fields = Fields(data)
    model = fields.get("model", as_str)
    query = fields.get("query", _texts, [], nullable=False, required=True)
    documents = fields.get("documents", _texts, [], nullable=False, required=True)
    top_n = fields.get("top_n", as_int)
    fields.raise_if_any()
    return ScoreRequest(model, query[:1], documents, top_n)


def pairs(request: ScoreRequest, max_model_len: int) -> list[tuple[Text, Text]]:
    """Which query each document is scored against: 1:1, 1:N or N:N, as vLLM allows."""
    queries, documents = request.queries, request.documents
    if not documents or not queries:
        raise pooling_error("At least one text_pair element must be given")
    if len(queries) == 1:
        matched = [(queries[0], d) for d in documents]
    elif len(queries) == len(documents):
        matched = list(zip(queries, documents, strict=True))
    else:
        raise pooling_error("Input lengths must be either 1:1, 1:N or N:N")
    _check_texts([*queries, *documents], max_model_len)
    return matched


def prompt_tokens(request: ScoreRequest) -> int:
    # A bi-encoder embeds each distinct query once and every document.
    return sum(q.tokens for q in request.queries) + sum(d.tokens for d in request.documents)


def score_body(*, request_id: str, created: int, model: str, scores: list[float], prompt_tokens: int) -> bytes:
    data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)]
    body = {"id": request_id, "object": "list", "created": created, "model": model, "data": data,
            "usage": usage(prompt_tokens)}  # fmt: skip
    return dumps(body).encode()


def rerank_body(*, request_id: str, model: str, documents: list[Text], scores: list[float], top_n: int | None,
                prompt_tokens: int) -> bytes:  # fmt: skip
    ranked = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
    if top_n is not None and top_n > 0:
        ranked = ranked[:top_n]
    results = [
        {"index": i, "document": {"text": documents[i].value, "multi_modal": None}, "relevance_score": scores[i]}
        for i in ranked
    ]
    body = {"id": request_id, "model": model, "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            "results": results}  # fmt: skip
    return dumps(body).encode()


def embeddings_bytes(*, request_id: str, created: int, model: str, vectors: list[list[float]],
                     prompt_tokens: int) -> tuple[bytes, bytes]:  # fmt: skip
    """``encoding_format`` bytes: raw float32s as the body, their layout in a ``metadata`` header
    (JSON with Python's default separators, as vLLM writes it)."""
    body = b"".join(struct.pack(f"<{len(v)}f", *v) for v in vectors)
    data, start = [], 0
    for i, vector in enumerate(vectors):
        end = start + 4 * len(vector)
        data.append({"index": i, "embed_dtype": "float32", "endianness": "native", "start": start, "end": end,
                     "shape": [len(vector)]})  # fmt: skip
        start = end
    metadata = {"id": request_id, "created": created, "model": model, "data": data,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}  # fmt: skip
    return body, json.dumps(metadata).encode()
