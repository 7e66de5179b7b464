"""Finding the usage of a non-streamed answer as its bytes pass, whatever the pieces' sizes."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from spotinference.gateway.usage import MAX_USAGE_BYTES, BodyUsage

USAGE = {"prompt_tokens": 9, "total_tokens": 13, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 8}}


def answer(text: str, usage: object, tail_bytes: int) -> bytes:
    # vLLM's key order: choices, then usage, then more keys (which can be long: prompt_token_ids).
    body = {"id": "cmpl-1", "choices": [{"index": 0, "text": text, "finish_reason": "length"}], "usage": usage,
            "prompt_token_ids": list(range(tail_bytes // 4)), "metrics": None}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()  # compact, as vLLM writes


def scan(data: bytes, cuts: list[int]) -> BodyUsage:
    found = BodyUsage()
    at = 0
    for cut in sorted({min(c, len(data)) for c in cuts} | {len(data)}):
        found.feed(data[at:cut])
        at = cut
    return found


@given(text=st.text(max_size=200) | st.just('"usage": {"prompt_tokens": 1} \\"usage\\":{'),
       tail=st.integers(0, 5000), cuts=st.lists(st.integers(0, 30000), max_size=40))
def test_the_top_level_usage_is_found_across_any_split(text: str, tail: int, cuts: list[int]) -> None:
    data = answer(text, USAGE, tail)
    found = scan(data, cuts)
    assert found.usage is not None and json.loads(found.usage) == USAGE
    assert found.finish_reason == "length"


@given(cuts=st.lists(st.integers(0, 3000), max_size=20))
def test_a_null_or_oversized_usage_is_not_taken(cuts: list[int]) -> None:
    assert scan(answer("x", None, 10), cuts).usage is None
    huge = {"prompt_tokens": 1, "completion_tokens": 1, "x": "y" * MAX_USAGE_BYTES}
    found = scan(answer("x", huge, 10), cuts)
    assert found.usage is None and found.oversized
