"""Deterministic tokens: a cheap tokenizer for prompts and a seeded vocabulary for replies.

The tokenizer is not any model's: it splits words into pieces of at most six characters and
counts every punctuation mark as one token, which is close enough to a BPE tokenizer for
timing and billing. The reply vocabulary is made of such pieces (" word", ".", ","), so
``count_tokens(reply_text) == completion_tokens`` always holds, as it does for a real tokenizer.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_TOKEN_RE = re.compile(r"\w{1,6}|[^\w\s]")

# A chat template adds tokens around every message and for the reply's start, as real ones do
# (e.g. "<|im_start|>user\n ... <|im_end|>\n" and "<|im_start|>assistant\n").
MESSAGE_OVERHEAD_TOKENS = 4
GENERATION_PROMPT_TOKENS = 3
BOS_TOKENS = 1  # what a text completion prompt gains from the tokenizer's special tokens
# The characters a chat template adds per message and for the reply's start.
MESSAGE_OVERHEAD_CHARS = 16
GENERATION_PROMPT_CHARS = 11
# vLLM refuses, before tokenizing, text longer than the context × its tokenizer's longest token;
# 13 is the longest token of the tiny model the project tests real vLLM with.
MAX_CHARS_PER_TOKEN = 13

_VOCAB_SIZE = 4096  # a power of two, so any odd stride walks the whole table
_LETTERS = "etaoinshrdlucmfwypvbgkqjxz"


def count_tokens(text: str) -> int:
    return len(_TOKEN_RE.findall(text))


# Token ids below this are the special tokens (BOS, EOS, role markers), as in the tiny model.
SPECIAL_IDS = 8
BOS_ID = 0


def token_ids(text: str) -> list[int]:
    """The ids of ``count_tokens(text)`` pieces: each piece always gets the same id."""
    return [SPECIAL_IDS + stable_hash(piece) % (_VOCAB_SIZE - SPECIAL_IDS) for piece in _TOKEN_RE.findall(text)]


def chat_token_ids(messages: Iterable[tuple[str, str]], add_generation_prompt: bool = True) -> list[int]:
    """As many ids as ``count_chat_tokens``: the template's special tokens around each message."""
    ids = []
    for role, text in messages:
        ids += [1, 2, *token_ids(role), 3, *token_ids(text), 4]  # MESSAGE_OVERHEAD_TOKENS == 4
    if add_generation_prompt:
        ids += [1, 5, 3]  # GENERATION_PROMPT_TOKENS == 3
    return ids


def count_chat_tokens(messages: Iterable[tuple[str, str]], add_generation_prompt: bool = True) -> int:
    """Tokens of a rendered chat prompt, from (role, text) pairs."""
    total = 0
    for role, text in messages:
        total += MESSAGE_OVERHEAD_TOKENS + count_tokens(role) + count_tokens(text)
    if add_generation_prompt:
        total += GENERATION_PROMPT_TOKENS
    return total


def chat_chars(messages: Iterable[tuple[str, str]], add_generation_prompt: bool = True) -> int:
    """Length of the rendered chat prompt, which vLLM checks before tokenizing it."""
    total = sum(len(role) + len(text) + MESSAGE_OVERHEAD_CHARS for role, text in messages)
    return total + (GENERATION_PROMPT_CHARS if add_generation_prompt else 0)


def stable_hash(*parts: object) -> int:
    """A 64-bit hash that is the same in every process (``hash()`` of a str is not)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """Reply tokens, each also kept JSON-encoded so streaming never calls a JSON encoder."""

    tokens: tuple[str, ...]
    tokens_json: tuple[str, ...]  # '" word"' for " word"
    first_json: tuple[str, ...]  # the same without the leading space: a reply's first token

    @classmethod
    def from_seed(cls, seed: int) -> Vocabulary:
        rng = random.Random(seed)
        tokens = []
        for _ in range(_VOCAB_SIZE):
            roll = rng.random()
            if roll < 0.06:
                tokens.append(".")
            elif roll < 0.10:
                tokens.append(",")
            else:
                length = rng.randint(1, 6)
                # Skewed towards common letters so the text looks less like line noise.
                tokens.append(" " + "".join(_LETTERS[min(int(rng.expovariate(0.25)), 25)] for _ in range(length)))
        # Letters and punctuation only: nothing in a token needs JSON escaping.
        tokens_json = tuple(f'"{t}"' for t in tokens)
        first_json = tuple(f'"{t.lstrip()}"' for t in tokens)
        return cls(tuple(tokens), tokens_json, first_json)

    def detokenize(self, ids: Iterable[int]) -> str:
        """Ids outside the vocabulary decode to nothing, as vLLM's tokenizer skips them."""
        return "".join(self.tokens[i] for i in ids if SPECIAL_IDS <= i < _VOCAB_SIZE)


@dataclass(frozen=True, slots=True)
class Reply:
    """Which vocabulary entries one sequence emits: token i is ``start + i * stride``."""

    start: int
    stride: int
    natural_tokens: int  # where the model would emit EOS if allowed to

    def token_index(self, i: int) -> int:
        return (self.start + i * self.stride) % _VOCAB_SIZE

    def text(self, vocab: Vocabulary, n_tokens: int, *, strip_first: bool) -> str:
        """The first ``n_tokens`` as one string; a chat reply does not start with a space."""
        if n_tokens <= 0:
            return ""
        parts = [vocab.tokens[self.token_index(i)] for i in range(n_tokens)]
        if strip_first:
            parts[0] = parts[0].lstrip()
        return "".join(parts)


def plan_reply(seed: int, prompt_key: Sequence[object], choice: int, min_tokens: int, max_tokens: int) -> Reply:
    """The reply a prompt gets: the same engine seed and prompt always give the same reply."""
    h = stable_hash(seed, *prompt_key, choice)
    span = max_tokens - min_tokens + 1
    natural = min_tokens + (h >> 16) % span if span > 0 else min_tokens
    return Reply(start=h % _VOCAB_SIZE, stride=((h >> 40) % _VOCAB_SIZE) | 1, natural_tokens=max(natural, 1))
