"""Reading OpenAI chat and completion requests into what the engine needs, as vLLM reads them.

Field by field in vLLM's declaration order (so errors come out in pydantic's order), then
vLLM's own checks: the context length, the sampling parameters. Errors are ``validation``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import text
from .validation import (
    NOT_A_DICT,
    FieldError,
    Fields,
    UnionError,
    as_bool,
    as_float,
    as_int,
    as_str,
    validation_error,
    vllm_error,
)

_MAX_N = 16384  # vLLM's VLLM_MAX_N_SEQUENCES default


@dataclass(frozen=True, slots=True)
class Prompt:
    key: tuple[Any, ...]  # what the reply is derived from
    tokens: int
    chars: int = 0  # of the text to tokenize; 0 for token ids


@dataclass(slots=True)
class GenerationRequest:
    chat: bool
    model: str | None
    prompts: list[Prompt]
    n: int
    max_tokens: int | None  # as asked; the engine clamps it to the model length
    max_tokens_param: str
    stream: bool
    include_usage: bool
    continuous_usage: bool
    ignore_eos: bool
    seed: int | None
    temperature: float | None
    top_p: float | None
    role: str = "assistant"  # of the reply; chat only


def _stream_options(value: Any) -> tuple[bool, bool]:
    if not isinstance(value, dict):
        raise FieldError("model_attributes_type", NOT_A_DICT)
    sub = Fields(value)
    include = sub.get("include_usage", as_bool, False)
    continuous = sub.get("continuous_usage_stats", as_bool, False)
    if sub.errors:
        raise sub.errors[0]  # re-rooted under stream_options by the caller
    return bool(include), bool(include) and bool(continuous)


# The branches of vLLM's ChatCompletionMessageParam union: the role each accepts (None: any
# string) and its fields in declaration order ("content?" is optional), which is the order
# pydantic reports their errors in.
_MESSAGE_BRANCHES = (
    ("ChatCompletionDeveloperMessageParam", "developer", ("content", "role")),
    ("ChatCompletionSystemMessageParam", "system", ("content", "role")),
    ("ChatCompletionUserMessageParam", "user", ("content", "role")),
    ("ChatCompletionAssistantMessageParam", "assistant", ("role", "content?")),
    ("ChatCompletionToolMessageParam", "tool", ("content", "role", "tool_call_id")),
    ("ChatCompletionFunctionMessageParam", "function", ("content", "name", "role")),
    ("CustomChatCompletionMessageParam", None, ("role", "content?")),
)


def _branch_errors(
    i: int, branch: str, role_literal: str | None, fields: tuple[str, ...], message: dict
) -> list[FieldError]:
    errors = []
    for name in fields:
        key = name.rstrip("?")
        loc = (i, branch, key)
        if key not in message:
            if not name.endswith("?"):
                errors.append(FieldError("missing", "Field required", loc, message))
            continue
        value = message[key]
        if key == "role":
            if role_literal is None:
                if not isinstance(value, str):
                    errors.append(FieldError("string_type", "Input should be a valid string", loc, value))
            elif value != role_literal:
                errors.append(FieldError("literal_error", f"Input should be '{role_literal}'", loc, value,
                                          {"expected": f"'{role_literal}'"}))  # fmt: skip
        elif key == "content" and not isinstance(value, str | list) and not (value is None and name.endswith("?")):
            errors.append(FieldError("string_type", "Input should be a valid string", loc, value))
            if role_literal is not None:  # OpenAI's content is str | Iterable[part]
                errors.append(FieldError("iterable_type", "Input should be iterable", loc, value))
    return errors


def _message_union_error(i: int, message: Any) -> UnionError | None:
    """Every branch's errors, or None when some branch accepts the message."""
    if not isinstance(message, dict):
        errors = [
            FieldError("dict_type", "Input should be a valid dictionary", (i, branch), message)
            for branch, _, _ in _MESSAGE_BRANCHES
        ]
        errors.append(FieldError("model_attributes_type", NOT_A_DICT, (i, "Message"), message))
        return UnionError(errors)
    errors = []
    for branch, role_literal, fields in _MESSAGE_BRANCHES:
        branch_errors = _branch_errors(i, branch, role_literal, fields, message)
        if not branch_errors:
            return None
        errors.extend(branch_errors)
    # The last branch is openai-harmony's Message; it fails twice, past the ten errors vLLM
    # prints, so only the count is visible.
    errors.append(FieldError("missing", "Field required", (i, "Message", "author"), message))
    errors.append(FieldError("missing", "Field required", (i, "Message", "content"), message))
    return UnionError(errors)


def _messages(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        raise FieldError("list_type", "Input should be a valid list")
    out = []
    errors: list[FieldError] = []
    for i, message in enumerate(value):
        union = _message_union_error(i, message)
        if union is not None:
            errors.extend(union.errors)
        else:
            out.append((message["role"], _content_text(message.get("content"))))
    if errors:
        raise UnionError(errors)
    return out


def _content_text(content: str | list | None) -> str:
    if not isinstance(content, list):
        return content or ""
    # Text parts only: the simulated model reads no images or audio.
    return "\n".join(
        part if isinstance(part, str) else part["text"]
        for part in content
        if isinstance(part, str) or (isinstance(part, dict) and isinstance(part.get("text"), str))
    )


def _request_checks(data: dict[str, Any]) -> None:
    """vLLM's "before" model validators: they fail the request outright, not as field errors."""
    if data.get("stream_options") and not data.get("stream"):
        raise vllm_error("Stream options can only be defined when `stream=True`.", "stream_options")


def _common(fields: Fields) -> dict[str, Any]:
    so = fields.get("stream_options", _stream_options) or (False, False)  # null means none
    return {
        "seed": fields.get("seed", as_int),
        "stream": bool(fields.get("stream", as_bool, False)),
        "include_usage": so[0],
        "continuous_usage": so[1],
        "temperature": fields.get("temperature", as_float),
        "top_p": fields.get("top_p", as_float),
        "ignore_eos": bool(fields.get("ignore_eos", as_bool, False, nullable=False)),
    }


def parse_chat(data: Any) -> GenerationRequest:
    if not isinstance(data, dict):
        raise validation_error([FieldError("model_attributes_type", NOT_A_DICT, (), data)])
    _request_checks(data)
    fields = Fields(data)
    messages = fields.get("messages", _messages, [], nullable=False, required=True)
    model = fields.get("model", as_str)
    max_tokens = fields.get("max_tokens", as_int)
    max_completion_tokens = fields.get("max_completion_tokens", as_int)
    n = fields.get("n", as_int, 1)
    common = _common(fields)
    add_generation_prompt = fields.get("add_generation_prompt", as_bool, True, nullable=False)
    fields.raise_if_any()
    prompt = Prompt(
        key=("chat", tuple(messages)),
        tokens=text.count_chat_tokens(messages, add_generation_prompt),
        chars=text.chat_chars(messages, add_generation_prompt),
    )
    # Without a generation prompt the model continues the last message, in its role.
    role = "assistant" if add_generation_prompt or not messages else messages[-1][0]
    return GenerationRequest(
        chat=True,
        model=model,
        prompts=[prompt],
        n=1 if n is None else n,
        max_tokens=max_completion_tokens if max_completion_tokens is not None else max_tokens,
        max_tokens_param="max_completion_tokens" if max_completion_tokens is not None else "max_tokens",
        role=role,
        **common,
    )


def _text_prompt(value: str) -> Prompt:
    # Completions add the tokenizer's special tokens (a BOS) to a text prompt; token ids go as sent.
    return Prompt(("text", value), text.count_tokens(value) + text.BOS_TOKENS, len(value))


def _prompts(value: Any) -> list[Prompt]:
    """The union list[int] | list[list[int]] | str | list[str], read as pydantic's smart mode does."""
    if isinstance(value, str):
        return [_text_prompt(value)]
    if value == []:
        return []  # refused later, as vLLM refuses it, when the prompts are rendered
    if isinstance(value, list):
        if all(_is_token_id(t) for t in value):
            return [Prompt(("ids", tuple(value)), len(value))]
        if all(isinstance(p, list) and all(_is_token_id(t) for t in p) for p in value):
            return [Prompt(("ids", tuple(p)), len(p)) for p in value]
        if all(isinstance(p, str) for p in value):
            return [_text_prompt(p) for p in value]
    raise UnionError(_prompt_union_errors(value))


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _prompt_union_errors(value: Any) -> list[FieldError]:
    """Each branch's errors in branch order (the branch names are not in vLLM's ``loc``)."""
    if not isinstance(value, list):
        return [
            FieldError("list_type", "Input should be a valid list", (), value),
            FieldError("list_type", "Input should be a valid list", (), value),
            FieldError("string_type", "Input should be a valid string", (), value),
            FieldError("list_type", "Input should be a valid list", (), value),
        ]
    errors = []
    for i, item in enumerate(value):  # list[int]
        try:
            if as_int(item) < 0:
                errors.append(FieldError("greater_than_equal", "Input should be greater than or equal to 0", (i,),
                                          item, {"ge": 0}))  # fmt: skip
        except FieldError as err:
            errors.append(FieldError(err.kind, err.msg, (i,), item))
    for i, item in enumerate(value):  # list[list[int]]
        if not isinstance(item, list):
            errors.append(FieldError("list_type", "Input should be a valid list", (i,), item))
    errors.append(FieldError("string_type", "Input should be a valid string", (), value))  # str
    for i, item in enumerate(value):  # list[str]
        if not isinstance(item, str):
            errors.append(FieldError("string_type", "Input should be a valid string", (i,), item))
    return errors


def parse_completion(data: Any) -> GenerationRequest:
    if not isinstance(data, dict):
        raise validation_error([FieldError("model_attributes_type", NOT_A_DICT, (), data)])
    _request_checks(data)
    prompt = data.get("prompt")
    if prompt is None or prompt == "":
        raise vllm_error("Either prompt or prompt_embeds must be provided and non-empty.", "prompt")
    fields = Fields(data)
    model = fields.get("model", as_str)
    prompts = fields.get("prompt", _prompts, [])
    # vLLM reads a null max_tokens as its default of 16.
    max_tokens = fields.get("max_tokens", as_int, 16)
    n = fields.get("n", as_int, 1, nullable=False)
    common = _common(fields)
    fields.raise_if_any()
    return GenerationRequest(
        chat=False,
        model=model,
        prompts=prompts,
        n=n,
        max_tokens=16 if max_tokens is None else max_tokens,
        max_tokens_param="max_tokens",
        **common,
    )



def check_sampling(request: GenerationRequest, max_model_len: int) -> list[int]:
    """vLLM's token-limit and sampling checks; returns each prompt's output budget."""
    if request.max_tokens is not None and request.max_tokens > max_model_len:
        raise vllm_error(
            f"{request.max_tokens_param}={request.max_tokens} cannot be greater than "
            f"max_model_len={max_model_len}. Please request fewer output tokens.",
            request.max_tokens_param,
            request.max_tokens,
        )
    if not request.prompts:
        raise vllm_error("You must pass at least one prompt")
    if request.chat and request.prompts[0].key == ("chat", ()):
        raise vllm_error("Cannot apply chat template to an empty conversation. Provide at least one message.")
    budgets = []
    max_chars = max_model_len * text.MAX_CHARS_PER_TOKEN
    for prompt in request.prompts:
        if prompt.chars > max_chars:
            raise vllm_error(
                f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
                f"contains {prompt.chars} characters (more than {max_chars} characters, which is the upper "
                f"bound for {max_model_len} input tokens). Please reduce the length of the input prompt.",
                "input_text",
                prompt.chars,
            )
        if prompt.tokens > max_model_len:
            # vLLM stops tokenizing one token past the limit, so it never knows the full count.
            counted = max_model_len + 1
            raise vllm_error(
                f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
                f"contains at least {counted} input tokens, which exceeds this limit even without any output "
                f"tokens. Please reduce the length of the input prompt.",
                "input_tokens",
                counted,
            )
        # Too many tokens asked for is not an error: vLLM clamps to what the context has left.
        room = max_model_len - prompt.tokens
        budgets.append(room if request.max_tokens is None else min(request.max_tokens, room))
    n = request.n
    if n < 1:
        raise vllm_error(f"n must be at least 1, got {n}.")
    if n > _MAX_N:
        raise vllm_error(
            f"n must be at most {_MAX_N}, got {n}. To increase this limit, set the VLLM_MAX_N_SEQUENCES "
            "environment variable."
        )
    if request.temperature is not None:
        t = request.temperature
        if t != t or t in (float("inf"), float("-inf")):
            raise vllm_error(f"temperature must be a finite number, got {t}.", "temperature", t)
        if t < 0.0:
            raise vllm_error(f"temperature must be non-negative, got {t}.", "temperature", t)
        if t > 2.0:
            raise vllm_error(f"temperature must be in [0, 2], got {t}.", "temperature", t)
    if request.top_p is not None and not 0.0 < request.top_p <= 1.0:
        raise vllm_error(f"top_p must be in (0, 1], got {request.top_p}.", "top_p", request.top_p)
    for budget in budgets:
        if budget < 1:
            raise vllm_error(f"max_tokens must be at least 1, got {budget}.", "max_tokens", budget)
    return budgets


def _token_list(value: Any) -> list[int]:
    if not isinstance(value, list):
        raise FieldError("list_type", "Input should be a valid list")
    errors = []
    for i, item in enumerate(value):
        try:
            as_int(item)
        except FieldError as err:
            errors.append(FieldError(err.kind, err.msg, (i,), item))
    if errors:
        raise UnionError(errors)
    return [as_int(item) for item in value]


def parse_tokenize(data: Any) -> tuple[str | None, list[int]]:
    """``POST /tokenize``: a ``prompt`` (special tokens added) or chat ``messages`` (templated)."""
    if not isinstance(data, dict):
        raise validation_error([FieldError("model_attributes_type", NOT_A_DICT, (), data)])
    if "prompt" not in data and "messages" not in data:
        # A union of the completion and chat request types: each reports its missing field.
        missing = [FieldError("missing", "Field required", (name,), data) for name in ("prompt", "messages")]
        raise validation_error(missing)
    fields = Fields(data)
    model = fields.get("model", as_str)
    if "prompt" in data:
        prompt = fields.get("prompt", as_str, "", nullable=False)
        add_special = fields.get("add_special_tokens", as_bool, True, nullable=False)
        fields.raise_if_any()
        return model, ([text.BOS_ID] * text.BOS_TOKENS if add_special else []) + text.token_ids(prompt)
    messages = fields.get("messages", _messages, [], nullable=False)
    add_generation_prompt = fields.get("add_generation_prompt", as_bool, True, nullable=False)
    fields.raise_if_any()
    return model, text.chat_token_ids(messages, add_generation_prompt)


def parse_detokenize(data: Any) -> tuple[str | None, list[int]]:
    if not isinstance(data, dict):
        raise validation_error([FieldError("model_attributes_type", NOT_A_DICT, (), data)])
    fields = Fields(data)
    model = fields.get("model", as_str)
    tokens = fields.get("tokens", _token_list, [], nullable=False, required=True)
    fields.raise_if_any()
    return model, tokens
