"""The APIs `spot bench --api` drives: what each one sends, and how its answer is read.

SELF-CONTAINED ON PURPOSE, like ``loadgen``: standard library only, because ``--on-node`` copies
this file next to ``loadgen.py`` on the node.

One class per API. ``body`` turns a prompt (a text, or chat messages) into that API's request;
``headers`` carries the key the way its clients do; a ``reader()`` reads one answer:

* streamed APIs get every SSE ``data:`` object in turn (``read``): it returns ``TOKEN`` when the
  object carries generated text (TTFT is the first, ITL the gaps between them), ``DONE`` when the
  stream has said all it will, and raises ``AnswerError`` when the stream reports an error;
* a non-streamed API (embeddings) gets its whole JSON answer (``read_whole``).

Token counts come only from the API's own final usage, in its own names, never from the text.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

TOKEN = "token"
DONE = "done"


class AnswerError(Exception):
    """The answer reported an error (in the stream, or a 200 without the expected shape)."""


def error_message(data: Any) -> str:
    """An error's message from the shapes the engines and the gateway use: OpenAI's
    ``{"error": {"message"}}``, Anthropic's ``{"type": "error", "error": {"message"}}``, the
    Responses stream's ``{"type": "error", "message"}``, FastAPI's ``{"detail"}``."""
    if not isinstance(data, dict):
        return str(data)[:160]
    error = data.get("error", data)
    message = error.get("message") if isinstance(error, dict) else error
    return str(message or data.get("message") or data.get("detail") or data)[:160]


class Reader:
    """One answer's token counts, filled in as it is read. A streamed API's reader has
    ``read(data) -> TOKEN | DONE | None``; a non-streamed one's has ``read_whole(data)``."""

    def __init__(self) -> None:
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None


class Api(ABC):
    name = ""
    path = ""
    streamed = True
    takes_messages = False  # whether a prompts file's {"messages": [...]} lines can be sent as they are

    @abstractmethod
    def body(self, model: str, prompt: str | list[dict[str, Any]], max_tokens: int) -> dict[str, Any]: ...

    def headers(self, key: str | None, *, engine: bool) -> dict[str, str]:
        """``engine``: the request goes to vLLM itself, which reads only ``Authorization: Bearer``."""
        return {"Authorization": f"Bearer {key}"} if key else {}

    @abstractmethod
    def reader(self) -> Reader: ...


def _as_messages(prompt: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


class _OpenAIUsageReader(Reader):
    """Chat and completions: ``choices`` chunks, then the ``usage`` chunk (``include_usage``)."""

    def __init__(self, chat: bool) -> None:
        super().__init__()
        self.chat = chat

    def read(self, data: dict[str, Any]) -> str | None:
        if data.get("error"):
            raise AnswerError(f"stream error: {error_message(data)}")
        choices = data.get("choices")
        usage = data.get("usage")
        if usage and not choices:
            self.input_tokens = usage.get("prompt_tokens")
            self.output_tokens = usage.get("completion_tokens")
        if not choices:
            return None
        if self.chat and "role" in (choices[0].get("delta") or {}):
            return None  # the role chunk comes with, not as, the first token
        return TOKEN


class Chat(Api):
    name, path, takes_messages = "chat", "/v1/chat/completions", True

    def body(self, model: str, prompt: str | list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        return {"model": model, "messages": _as_messages(prompt), "max_tokens": max_tokens, "ignore_eos": True,
                "temperature": 1.0, "stream": True, "stream_options": {"include_usage": True}}

    def reader(self) -> Reader:
        return _OpenAIUsageReader(chat=True)


class Completions(Api):
    name, path = "completions", "/v1/completions"

    def body(self, model: str, prompt: str | list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 1.0,
                "stream": True, "stream_options": {"include_usage": True}}

    def reader(self) -> Reader:
        return _OpenAIUsageReader(chat=False)


class _ResponsesReader(Reader):
    """``response.output_text.delta`` events; the usage is only in the last event."""

    FINAL = ("response.completed", "response.incomplete")

    def read(self, data: dict[str, Any]) -> str | None:
        kind = data.get("type")
        if kind == "response.output_text.delta":
            return TOKEN if data.get("delta") else None
        if kind in self.FINAL:
            usage = (data.get("response") or {}).get("usage") or {}
            self.input_tokens = usage.get("input_tokens")
            self.output_tokens = usage.get("output_tokens")
            return DONE
        if kind == "response.failed":
            raise AnswerError(f"stream error: {error_message((data.get('response') or {}).get('error') or data)}")
        if kind == "error" or (kind is None and data.get("error")):
            raise AnswerError(f"stream error: {error_message(data)}")
        return None


class Responses(Api):
    name, path, takes_messages = "responses", "/v1/responses", True

    def body(self, model: str, prompt: str | list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        # store: false, or an engine with the Responses store on keeps every benchmark reply in memory.
        return {"model": model, "input": prompt, "max_output_tokens": max_tokens, "ignore_eos": True,
                "temperature": 1.0, "store": False, "stream": True}

    def reader(self) -> Reader:
        return _ResponsesReader()


class _MessagesReader(Reader):
    """``message_start`` (input tokens), ``content_block_delta``*, ``message_delta`` (final usage)."""

    def read(self, data: dict[str, Any]) -> str | None:
        kind = data.get("type")
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            return TOKEN if delta.get("text") or delta.get("partial_json") or delta.get("thinking") else None
        if kind == "message_start":
            usage = (data.get("message") or {}).get("usage") or {}
            self.input_tokens = usage.get("input_tokens")
        elif kind == "message_delta":
            usage = data.get("usage") or {}
            if usage.get("input_tokens") is not None:
                self.input_tokens = usage["input_tokens"]
            self.output_tokens = usage.get("output_tokens")
        elif kind == "message_stop":
            return DONE
        elif kind == "error" or data.get("error"):
            raise AnswerError(f"stream error: {error_message(data)}")
        return None


class Messages(Api):
    name, path, takes_messages = "messages", "/v1/messages", True
    VERSION = "2023-06-01"  # what the anthropic SDK sends

    def body(self, model: str, prompt: str | list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        # No ignore_eos: vLLM's Messages API has none, so a reply may end before max_tokens.
        messages = _as_messages(prompt)
        system = "\n".join(str(m.get("content")) for m in messages if m.get("role") == "system")
        body: dict[str, Any] = {"model": model, "messages": [m for m in messages if m.get("role") != "system"],
                                "max_tokens": max_tokens, "temperature": 1.0, "stream": True}
        return {**body, "system": system} if system else body

    def headers(self, key: str | None, *, engine: bool) -> dict[str, str]:
        headers = {"anthropic-version": self.VERSION}
        if key:
            headers.update({"Authorization": f"Bearer {key}"} if engine else {"x-api-key": key})
        return headers

    def reader(self) -> Reader:
        return _MessagesReader()


class _EmbeddingsReader(Reader):
    def read_whole(self, data: Any) -> None:
        usage = data.get("usage") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("data"), list) or not usage:
            raise AnswerError(f"not an embeddings answer: {str(data)[:120]}")
        self.input_tokens = usage.get("prompt_tokens")
        self.output_tokens = 0


class Embeddings(Api):
    name, path, streamed = "embeddings", "/v1/embeddings", False

    def body(self, model: str, prompt: str | list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        return {"model": model, "input": prompt}

    def reader(self) -> Reader:
        return _EmbeddingsReader()


APIS: dict[str, Api] = {api.name: api for api in (Chat(), Completions(), Responses(), Messages(), Embeddings())}
NAMES = tuple(APIS)
GENERATING = tuple(name for name, api in APIS.items() if api.streamed)
