"""The byte-level stream editing: the client sees what vLLM would have sent for its options.

The chunk shapes are vLLM 0.32's, as captured in tests/engines/VLLM_WIRE_FORMAT.md.
"""

from __future__ import annotations

import json

import pytest

from spotinference.gateway.sse import StreamState

HEAD = b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"tiny-chat","choices":'
ROLE = HEAD + b'[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]'
ROLE_TAIL = b',"prompt_token_ids":null,"prompt_text":null}'
TOKEN = HEAD + b'[{"index":0,"delta":{"content":"hi"},"logprobs":null,"finish_reason":null,"token_ids":null}]'
FINISH = HEAD + b'[{"index":0,"delta":{"content":"!"},"logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":null}]'
FINGERPRINT = b',"system_fingerprint":"vllm-0.32.0-ef105fed"'
USAGE_CHUNK = HEAD + b'[],"usage":{"prompt_tokens":9,"total_tokens":11,"completion_tokens":2}' + FINGERPRINT + b"}"
DONE = b"data: [DONE]"


def usage(completion: int) -> bytes:
    return b',"usage":{"prompt_tokens":9,"total_tokens":%d,"completion_tokens":%d,"completion_tokens_details":null}' % (
        9 + completion, completion)


def events(*parts: bytes) -> bytes:
    return b"".join(p + b"\n\n" for p in parts)


# What vLLM sends for each client option set (a, b, c in the capture).
VLLM_PLAIN = events(ROLE + ROLE_TAIL, TOKEN + b"}", FINISH + FINGERPRINT + b"}", DONE)
VLLM_INCLUDE = events(ROLE + ROLE_TAIL, TOKEN + b"}", FINISH + b"}", USAGE_CHUNK, DONE)
VLLM_CONTINUOUS = events(ROLE + usage(0) + ROLE_TAIL, TOKEN + usage(1) + b"}", FINISH + usage(2) + b"}", USAGE_CHUNK, DONE)


def relay(state: StreamState, data: bytes, piece: int) -> bytes:
    out = b""
    for start in range(0, len(data), piece):
        sent, _ = state.feed(data[start : start + piece])
        out += sent
    return out


@pytest.mark.parametrize("piece", [1, 7, 64, 100_000])
@pytest.mark.parametrize(
    ("include", "continuous", "expected"),
    [(False, False, VLLM_PLAIN), (True, False, VLLM_INCLUDE), (True, True, VLLM_CONTINUOUS)],
    ids=["no-options", "include-usage", "continuous-usage"],
)
def test_the_client_gets_exactly_what_vllm_sends_for_its_options(include: bool, continuous: bool, expected: bytes, piece: int) -> None:
    # Upstream is always asked for continuous usage; the bytes may arrive split anywhere.
    state = StreamState(client_include_usage=include, client_continuous_usage=continuous)
    assert relay(state, VLLM_CONTINUOUS, piece) == expected
    assert state.usage() == (9, 2) and state.finish_reason == "length" and state.done
    for event in expected.split(b"\n\n")[:-2]:
        json.loads(event[len(b"data: "):])


def test_an_aborted_stream_keeps_its_last_running_total() -> None:
    state = StreamState(client_include_usage=False, client_continuous_usage=False)
    relay(state, events(ROLE + usage(0) + ROLE_TAIL, TOKEN + usage(1) + b"}"), 9)
    assert state.usage() == (9, 1) and not state.done and state.finish_reason is None


def test_first_token_is_the_first_chunk_that_counts_a_token_not_the_role_chunk() -> None:
    state = StreamState(client_include_usage=False, client_continuous_usage=False)
    assert state.feed(events(ROLE + usage(0) + ROLE_TAIL))[1] is False
    # A token can arrive as empty text (an incomplete UTF-8 piece); it is still the first token.
    empty_token = HEAD + b'[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":null,"token_ids":null}]'
    assert state.feed(events(empty_token + usage(1) + b"}"))[1] is True
    assert state.feed(events(FINISH + usage(2) + b"}"))[1] is False


def test_a_held_finish_chunk_is_released_if_the_stream_breaks() -> None:
    state = StreamState(client_include_usage=False, client_continuous_usage=False)
    out, _ = state.feed(events(TOKEN + usage(1) + b"}", FINISH + usage(2) + b"}"))
    assert out == events(TOKEN + b"}")
    assert state.drain() == events(FINISH + b"}")


def test_a_usage_object_with_nested_details_is_cut_whole() -> None:
    # vLLM nests prompt_tokens_details when prefix caching reports cached tokens.
    nested = b',"usage":{"prompt_tokens":9,"total_tokens":10,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":8}}'
    state = StreamState(client_include_usage=False, client_continuous_usage=False)
    out, first = state.feed(events(TOKEN + nested + b"}"))
    assert out == events(TOKEN + b"}") and first
    assert state.usage() == (9, 1)


def choice_chunk(index: int, prompt_tokens: int, completion_tokens: int) -> bytes:
    return (b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"tiny-chat","choices":[{"index":%d,'
            b'"text":"x","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],'
            b'"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}}'
            % (index, prompt_tokens, prompt_tokens + completion_tokens, completion_tokens))


def test_an_aborted_stream_is_billed_every_choice_of_every_prompt_and_each_prompt_once() -> None:
    # Two prompts (3 and 5 tokens), n=2: choices 0,1 are prompt 0's, 2,3 prompt 1's (vLLM's
    # prompt_index * n + i). Each chunk's usage is its own choice's running total.
    state = StreamState(client_include_usage=False, client_continuous_usage=False, choices_per_prompt=2)
    sent = {0: 4, 1: 2, 2: 7, 3: 1}
    for step in range(1, 8):
        for index, upto in sent.items():
            if step <= upto:
                state.feed(events(choice_chunk(index, 3 if index < 2 else 5, step)))
    assert state.usage() == (3 + 5, 4 + 2 + 7 + 1) and not state.done


def test_the_final_usage_chunk_wins_over_the_running_totals() -> None:
    state = StreamState(client_include_usage=True, client_continuous_usage=False, choices_per_prompt=2)
    state.feed(events(choice_chunk(0, 3, 1), choice_chunk(1, 3, 1), USAGE_CHUNK, DONE))
    assert state.usage() == (9, 2) and state.done


@pytest.mark.parametrize("bad", [b"1e400", b"-3", b'"12"', b"1.5", b"true", b"null", b"99999999999999"])
def test_usage_the_engine_cannot_mean_is_an_error_not_a_bill(bad: bytes) -> None:
    from spotinference.gateway.sse import UsageError

    state = StreamState(client_include_usage=False, client_continuous_usage=False)
    state.feed(events(TOKEN + b',"usage":{"prompt_tokens":9,"total_tokens":1,"completion_tokens":' + bad + b"}}"))
    with pytest.raises(UsageError):
        state.usage()


@pytest.mark.parametrize("one_choice", [False, True])
def test_an_event_that_is_not_utf8_is_a_stream_error(one_choice: bool) -> None:
    from spotinference.gateway.sse import StreamFormatError

    state = StreamState(client_include_usage=False, client_continuous_usage=False)
    state.one_choice = one_choice  # one prompt, n=1: the relay's usual stream
    state.feed(events(TOKEN + usage(1) + b"}"))
    with pytest.raises(StreamFormatError):
        state.feed(events(TOKEN.replace(b'"hi"', b'"\xff\xfe"') + usage(2) + b"}"))


def test_an_engine_inventing_choices_cannot_grow_the_bookkeeping_without_bound() -> None:
    from spotinference.gateway import sse

    state = StreamState(client_include_usage=True, client_continuous_usage=True)
    state.feed(b"".join(events(choice_chunk(i, 1, 1)) for i in range(sse.MAX_CHOICES)))
    with pytest.raises(sse.StreamFormatError):
        state.feed(events(choice_chunk(sse.MAX_CHOICES, 1, 1)))
    assert state.choices_seen == sse.MAX_CHOICES


def test_an_event_split_into_many_pieces_is_joined_once_and_bounded() -> None:
    from spotinference.gateway import sse

    state = StreamState(client_include_usage=True, client_continuous_usage=True)
    long_text = b"x" * 300_000
    event = TOKEN.replace(b'"hi"', b'"' + long_text + b'"') + usage(1) + b"}"
    out = relay(state, events(event, DONE), 1000)  # split inside the event and inside "\n\n"
    assert out == events(event, DONE) and state.usage() == (9, 1)
    state = StreamState(client_include_usage=True, client_continuous_usage=True)
    with pytest.raises(sse.StreamFormatError):
        for _ in range(sse.MAX_EVENT_BYTES // 65536 + 2):
            state.feed(b"y" * 65536)


def test_a_deeply_nested_usage_object_is_cut_in_one_pass() -> None:
    nested = b',"usage":{"prompt_tokens":9,"total_tokens":10,"completion_tokens":1,"x":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}"
    state = StreamState(client_include_usage=False, client_continuous_usage=False)
    out, _ = state.feed(events(TOKEN + nested + b"}"))
    assert out == events(TOKEN + b"}")


def test_one_event_per_read_gives_the_client_and_the_bill_what_any_other_split_gives() -> None:
    # The relay's usual read is one whole event of one choice (a fast path in StreamState.feed);
    # what leaves for the client, the running total an abort is billed, the finish reason and
    # the first token must not depend on how the engine's bytes were split, for every option set
    # and for the chunks that are not plain tokens (non-ASCII text, nested usage, the finish, the
    # usage-only chunk).
    accented = HEAD + '[{"index":0,"delta":{"content":"é"},"logprobs":null,"finish_reason":null,"token_ids":null}]'.encode()
    nested = b',"usage":{"prompt_tokens":9,"total_tokens":13,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":8}}'
    stream = [ROLE + usage(0) + ROLE_TAIL, TOKEN + usage(1) + b"}", accented + usage(2) + b"}", TOKEN + usage(3) + b"}",
              TOKEN + nested + b"}", FINISH + usage(5) + b"}", USAGE_CHUNK, DONE]
    for include, continuous in ((False, False), (True, False), (True, True)):
        for one_choice in (True, False):
            def fresh() -> StreamState:
                state = StreamState(client_include_usage=include, client_continuous_usage=continuous)
                state.one_choice = one_choice
                return state

            by_event, whole, pieces = fresh(), fresh(), fresh()
            sent_by_event, firsts = b"", []
            for i, event in enumerate(stream):
                out, first = by_event.feed(event + b"\n\n")
                sent_by_event += out
                firsts.append(first)
                prefix = fresh()
                relay(prefix, events(*stream[: i + 1]), 100_000)
                # An abort after this event bills what reading it whole would bill.
                assert (by_event.usage(), by_event.finish_reason) == (prefix.usage(), prefix.finish_reason), (i, include)
            assert sent_by_event == relay(whole, events(*stream), 100_000) == relay(pieces, events(*stream), 7)
            assert firsts == [False, True] + [False] * 6
            assert by_event.usage() == whole.usage() == (9, 2) and by_event.done and by_event.finish_reason == "length"
