"""What the benchmark sends: synthetic prompts of a token length distribution, or a JSONL file.

Synthetic prompts are made of common English words, each about one token in the usual BPE
vocabularies, so a prompt of N words is roughly N tokens; the server's ``usage`` gives the true
count, and the results report that, never this estimate. Lengths are drawn uniformly in
``[n·(1−spread), n·(1+spread)]`` (``vllm bench serve``'s range ratio). Every request gets
``max_tokens`` (and ``ignore_eos`` where the API has it) so the engine generates that many tokens;
``apis`` shapes the prompt into each API's request.

A prompts file has one JSON object per line: ``{"prompt": "..."}`` or ``{"messages": [...]}``
(chat, responses and messages only), optionally with ``"max_tokens"`` (else ``--output-tokens``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .apis import APIS

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two more write "
    "go see number no way could people my than first water been call who oil its now find long down day did "
    "get come made may part over new sound take only little work know place year live me back give most very "
    "after thing our just name good sentence man think say great where help through much before line right "
    "too mean old any same tell boy follow came want show also around form three small set put end does "
    "another well large must big even such because turn here why ask went men read need land different home "
    "us move try kind hand picture again change off play spell air away animal house point page letter mother "
    "answer found study still learn should world high every near add food between own below country plant"
).split()


@dataclass(frozen=True)
class PromptShape:
    input_tokens: int = 128
    output_tokens: int = 256
    spread: float = 0.0
    prompts_file: Path | None = None

    def __post_init__(self) -> None:
        if self.input_tokens < 1:
            raise InputError(f"--input-tokens must be 1 or more, got {self.input_tokens}")
        if self.output_tokens < 1:
            raise InputError(f"--output-tokens must be 1 or more, got {self.output_tokens}")
        if not 0 <= self.spread < 1:
            raise InputError(f"--spread must be at least 0 and below 1, got {self.spread}")

    def describe(self, *, generating: bool = True) -> str:
        spread = f" ±{self.spread:.0%}" if self.spread else ""
        source = f"prompts from {self.prompts_file.name}" if self.prompts_file else f"~{self.input_tokens}{spread} in"
        return f"{source} / {self.output_tokens}{spread} out" if generating else source


def _length(rng: random.Random, n: int, spread: float) -> int:
    if not spread:
        return n
    return max(1, round(rng.uniform(n * (1 - spread), n * (1 + spread))))


def synthetic_prompt(rng: random.Random, words: int) -> str:
    # A distinct start per prompt, so prefix caching cannot serve one prompt from another.
    return " ".join(rng.choice(WORDS) for _ in range(words))


def build_bodies(shape: PromptShape, *, model: str, api: str, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` request bodies of ``api`` (a name in ``apis.APIS``), ready to send."""
    kind = APIS[api]
    rng = random.Random(seed)
    prompts = load_prompts(shape.prompts_file) if shape.prompts_file else None
    bodies = []
    for index in range(count):
        if prompts is not None:
            item = prompts[index % len(prompts)]
            max_tokens = int(item.get("max_tokens") or _length(rng, shape.output_tokens, shape.spread))
            if "messages" in item and not kind.takes_messages:
                raise InputError(f"{shape.prompts_file}: a line with messages needs --api chat, responses or messages")
            prompt: str | list[dict[str, Any]] = item["messages"] if "messages" in item else item["prompt"]
        else:
            prompt = synthetic_prompt(rng, _length(rng, shape.input_tokens, shape.spread))
            max_tokens = _length(rng, shape.output_tokens, shape.spread)
        bodies.append(kind.body(model, prompt, max_tokens))
    return bodies


def load_prompts(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read the prompts file {path}: {exc.strerror}") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise InputError(f"{path}:{number}: not a JSON object") from None
        if not isinstance(item, dict) or not (isinstance(item.get("prompt"), str) or isinstance(item.get("messages"), list)):
            raise InputError(f'{path}:{number}: expected {{"prompt": "..."}} or {{"messages": [...]}}')
        if "max_tokens" in item and not (isinstance(item["max_tokens"], int) and item["max_tokens"] > 0):
            raise InputError(f"{path}:{number}: max_tokens must be a positive integer")
        prompts.append(item)
    if not prompts:
        raise InputError(f"the prompts file {path} has no prompts")
    return prompts
