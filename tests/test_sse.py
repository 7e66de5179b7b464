"""The byte-level stream editing: the client sees what vLLM would have sent for its options."""

from __future__ import annotations

import json

from spotinference.gateway.sse import StreamState

ROLE = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]'
TOKEN = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,"finish_reason":null}]'
LAST = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"!"},"logprobs":null,"finish_reason":"length","stop_reason":null}]'
FINAL = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":5,"total_tokens":7,"completion_tokens":2}}'


def usage(prompt: int, completion: int) -> bytes:
    return b',"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}}' % (prompt, prompt + completion, completion)


def upstream_stream() -> bytes:
    """What vLLM sends when asked for include_usage + continuous_usage_stats."""
    return b"".join([
        ROLE + usage(5, 0) + b"\n\n",
        TOKEN + usage(5, 1) + b"\n\n",
        LAST + usage(5, 2) + b"\n\n",
        FINAL + b"\n\n",
        b"data: [DONE]\n\n",
    ])


def relay(state: StreamState, data: bytes, piece: int) -> bytes:
    out = b""
    for start in range(0, len(data), piece):
        sent, _ = state.feed(data[start : start + piece])
        out += sent
    return out


def test_a_client_that_asked_for_nothing_gets_plain_chunks() -> None:
    for piece in (1, 7, 64, 10_000):  # however the bytes arrive
        state = StreamState(client_include_usage=False, client_continuous_usage=False)
        out = relay(state, upstream_stream(), piece)
        assert out == ROLE + b"}\n\n" + TOKEN + b"}\n\n" + LAST + b"}\n\n" + b"data: [DONE]\n\n"
        assert state.usage() == (5, 2) and state.finish_reason == "length" and state.done
        for event in out.split(b"\n\n")[:-2]:
            json.loads(event[len(b"data: "):])  # still valid JSON


def test_a_client_that_asked_for_include_usage_gets_only_the_final_usage_chunk() -> None:
    state = StreamState(client_include_usage=True, client_continuous_usage=False)
    out = relay(state, upstream_stream(), 13)
    assert out == ROLE + b"}\n\n" + TOKEN + b"}\n\n" + LAST + b"}\n\n" + FINAL + b"\n\n" + b"data: [DONE]\n\n"


def test_a_client_that_asked_for_everything_gets_the_bytes_unchanged() -> None:
    state = StreamState(client_include_usage=True, client_continuous_usage=True)
    assert relay(state, upstream_stream(), 5) == upstream_stream()
    assert state.usage() == (5, 2)


def test_an_aborted_stream_keeps_its_last_running_total() -> None:
    state = StreamState(client_include_usage=False, client_continuous_usage=False)
    partial = upstream_stream().split(LAST)[0]
    relay(state, partial, 9)
    assert state.usage() == (5, 1) and not state.done and state.finish_reason is None


def test_first_token_is_the_first_chunk_with_text_not_the_role_chunk() -> None:
    state = StreamState(client_include_usage=False, client_continuous_usage=False)
    _, first = state.feed(ROLE + usage(5, 0) + b"\n\n")
    assert first is False
    _, first = state.feed(TOKEN + usage(5, 1) + b"\n\n")
    assert first is True
    _, first = state.feed(LAST + usage(5, 2) + b"\n\n")
    assert first is False
