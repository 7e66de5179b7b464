"""vLLM's speech-to-text routes (``/v1/audio/transcriptions``, ``/translations``), from its source.

NOT captured from a running vLLM: the CPU build the project tests with lacks vLLM's audio
extras (tests/engines/VLLM_WIRE_FORMAT.md, "Audio"), so the shapes follow vLLM 0.32's
``TranscriptionResponse`` (``{"text":..,"usage":{"type":"duration","seconds":N}}``, seconds
rounded up) and ``TranslationResponse`` (``{"text":..}``) for ``response_format`` json. The
request is ``multipart/form-data`` with ``file`` and ``model`` fields; the simulator reads the
audio length from a WAV header (anything else counts one second per 32 kB, 16 kHz 16-bit mono).
"""

from __future__ import annotations

import hashlib
import io
import math
import wave
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP

from .validation import FieldError, validation_error
from .wire import dumps

_BYTES_PER_SECOND = 32000  # 16 kHz, 16-bit, mono: what Whisper is fed
TOKENS_PER_SECOND = 4  # of the simulated transcript


@dataclass(frozen=True, slots=True)
class AudioRequest:
    model: str | None
    seconds: float
    digest: str  # of the audio: the same file always gets the same transcript


def _form(content_type: str, body: bytes) -> dict[str, bytes]:
    if not content_type.lower().startswith("multipart/form-data"):
        raise validation_error([FieldError("missing", "Field required", ("file",), {})])
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[str(name)] = part.get_payload(decode=True) or b""
    return fields


def _seconds(audio: bytes) -> float:
    try:
        with wave.open(io.BytesIO(audio)) as wav:
            return wav.getnframes() / float(wav.getframerate() or 1)
    except (wave.Error, EOFError):
        return len(audio) / _BYTES_PER_SECOND


def parse(content_type: str, body: bytes) -> AudioRequest:
    form = _form(content_type, body)
    if "file" not in form:
        raise validation_error([FieldError("missing", "Field required", ("file",), {k: "" for k in form})])
    model = form.get("model")
    audio = form["file"]
    return AudioRequest(
        model=model.decode("utf-8", "replace") if model else None,
        seconds=_seconds(audio),
        digest=hashlib.blake2b(audio, digest_size=8).hexdigest(),
    )


def prompt_tokens(seconds: float) -> int:
    return max(1, math.ceil(seconds * TOKENS_PER_SECOND))


def response_body(content: str, seconds: float, *, translate: bool) -> bytes:
    if translate:
        return dumps({"text": content}).encode()
    return dumps({"text": content, "usage": {"type": "duration", "seconds": math.ceil(seconds)}}).encode()
