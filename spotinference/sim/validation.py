"""vLLM's error answers, and the FastAPI/pydantic request validation in front of them, imitated.

vLLM validates a body in stages, and each stage has its own error shape; the simulator keeps
the stages in the same order so the same bad request gets the same answer:

    stage                                  status  error.type        error.param
    content-type is not application/json   400     "Bad Request"     null
    body is not JSON                       400     "Bad Request"     "body.<offset>"
    a field has the wrong type / missing   400     "Bad Request"     "body.<field>"
    request-level checks (stream_options)  400     "BadRequestError" the field
    unknown model                          404     "NotFoundError"   "model"
    token limits, sampling parameters      400     "BadRequestError" the field or null

The first three are FastAPI/pydantic validation errors, whose message lists each error as
Python prints a dict; the others are vLLM's own (``message (parameter=..., value=...)``).
Only the few pydantic behaviours the simulator's fields need are here: lax-mode conversion of
int, float, bool and str, "missing", and unions reporting every branch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_MAX_ERROR_INPUT_CHARS = 200
NOT_A_DICT = "Input should be a valid dictionary or object to extract fields from"
_MAX_REPORTED_ERRORS = 10


class ApiError(Exception):
    """An error answered to the client as vLLM's ``{"error": {...}}`` body."""

    def __init__(self, status: int, err_type: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.err_type = err_type
        self.message = message
        self.param = param

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.err_type, "param": self.param, "code": self.status}
        return json.dumps({"error": error}, ensure_ascii=False, separators=(",", ":")).encode()

    def anthropic_body(self) -> bytes:
        """On /v1/messages vLLM's own errors are Anthropic-shaped; request-schema errors are not."""
        if self.err_type == "Bad Request":
            return self.body()
        error = {"type": "error", "error": {"type": self.err_type, "message": self.message}}
        return json.dumps(error, ensure_ascii=False, separators=(",", ":")).encode()


def vllm_error(message: str, parameter: str | None = None, value: Any = None) -> ApiError:
    """vLLM's VLLMValidationError, whose text carries its parameter and value."""
    extras = []
    if parameter is not None:
        extras.append(f"parameter={parameter}")
    if value is not None:
        extras.append(f"value={value}")
    if extras:
        message = f"{message} ({', '.join(extras)})"
    return ApiError(400, "BadRequestError", message, parameter)


def not_found_model(model: str, served: str) -> ApiError:
    return ApiError(404, "NotFoundError", f"The model `{model}` does not exist. Valid aliases: {served}.", "model")


def _summarize_input(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= _MAX_ERROR_INPUT_CHARS else value[:_MAX_ERROR_INPUT_CHARS] + "...[truncated]"
    if isinstance(value, list | dict):
        return f"<{type(value).__name__} of {len(value)} items>"
    rendered = str(value)
    return rendered if len(rendered) <= _MAX_ERROR_INPUT_CHARS else rendered[:_MAX_ERROR_INPUT_CHARS] + "...[truncated]"


@dataclass
class FieldError(Exception):
    kind: str
    msg: str
    loc: tuple[str | int, ...] = ()
    input: Any = None
    ctx: dict[str, Any] | None = None


def validation_error(errors: list[FieldError | str]) -> ApiError:
    """FastAPI's RequestValidationError as vLLM renders it: "N validation error(s):" and a list."""
    lines = []
    param = None
    for err in errors[:_MAX_REPORTED_ERRORS]:
        if isinstance(err, str):
            lines.append(err)
            continue
        loc = ".".join(str(part) for part in ("body", *err.loc))
        entry: dict[str, Any] = {"type": err.kind, "loc": loc, "msg": err.msg, "input": _summarize_input(err.input)}
        if err.ctx is not None:
            entry["ctx"] = err.ctx
        lines.append(str(entry))
    first = errors[0]
    if isinstance(first, FieldError):
        param = ".".join(str(part) for part in ("body", *first.loc))
    label = "error" if len(errors) == 1 else "errors"
    message = f"{len(errors)} validation {label}:\n" + "".join(f"  {line}\n" for line in lines)
    if len(errors) > _MAX_REPORTED_ERRORS:
        message += f"  ...and {len(errors) - _MAX_REPORTED_ERRORS} more {label}\n"
    return ApiError(400, "Bad Request", message.rstrip(), param)


def parse_json_body(content_type: str, body: bytes) -> Any:
    if content_type.lower().split(";", 1)[0].strip() != "application/json":
        raise validation_error(["Unsupported Media Type: Only 'application/json' is allowed"])
    if not body:
        raise validation_error([FieldError("missing", "Field required", (), None)])
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        pos = exc.pos if isinstance(exc, json.JSONDecodeError) else exc.start
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise validation_error([FieldError("json_invalid", "JSON decode error", (pos,), {}, {"error": msg})]) from None


# Pydantic's lax mode, for the handful of types the simulator reads.

_INT_PARSING = "Input should be a valid integer, unable to parse string as an integer"
_FLOAT_PARSING = "Input should be a valid number, unable to parse string as a number"
_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}


def as_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise FieldError("int_from_float", "Input should be a valid integer, got a number with a fractional part")
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise FieldError("int_parsing", _INT_PARSING) from None
    raise FieldError("int_type", "Input should be a valid integer")


def as_float(value: Any) -> float:
    if isinstance(value, bool | int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise FieldError("float_parsing", _FLOAT_PARSING) from None
    raise FieldError("float_type", "Input should be a valid number")


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, int):
        raise FieldError("bool_parsing", "Input should be a valid boolean, unable to interpret input")
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise FieldError("bool_parsing", "Input should be a valid boolean, unable to interpret input")
    raise FieldError("bool_type", "Input should be a valid boolean")


def as_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise FieldError("string_type", "Input should be a valid string")


class Fields:
    """Reads fields in the model's order and collects every error, as pydantic does."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.errors: list[FieldError | str] = []

    def get(self, name: str, convert, default: Any = None, *, nullable: bool = True, required: bool = False) -> Any:
        if name not in self.data:
            if required:
                self.errors.append(FieldError("missing", "Field required", (name,), self.data))
            return default
        value = self.data[name]
        if value is None and nullable:
            return None
        try:
            return convert(value)
        except FieldError as err:
            err.loc = (name, *err.loc)
            err.input = value if err.input is None else err.input
            self.errors.append(err)
        except UnionError as union:
            for err in union.errors:
                err.loc = (name, *err.loc)
            self.errors.extend(union.errors)
        return default

    def raise_if_any(self) -> None:
        if self.errors:
            raise validation_error(self.errors)


class UnionError(Exception):
    """A value that matched no branch of a union: pydantic reports every branch's errors."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(errors)
        self.errors = errors
