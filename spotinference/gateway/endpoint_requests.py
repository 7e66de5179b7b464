"""Reading a request on one of the other endpoints (``endpoints.py``): its model, whether it
streams, what it refers to. The body goes upstream exactly as the client sent it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .endpoints import AUDIO_STREAM, Body, Endpoint
from .errors import GatewayError
from .event_stream import EventStreamState
from .requests import ClientRequest, parse_json_object


@dataclass
class EndpointRequest(ClientRequest):
    spec: Endpoint | None = None
    method: str = "POST"
    upstream_path: str = ""  # the engine's path, with the query string
    content_type: bytes = b"application/json"
    response_id: str | None = None  # the stored response this request reads, cancels or continues


_BOUNDARY = re.compile(rb'boundary="?([^";]{1,200})"?', re.IGNORECASE)
_FORM_NAME = re.compile(rb'form-data;[^\r\n]*?\bname="([^"]*)"', re.IGNORECASE)
MAX_FORM_VALUE = 1024  # model names and flags are short; a file part is never read as one


def parse_endpoint_request(spec: Endpoint, body: bytes, *, content_type: bytes | None,
                           path: str, query: bytes, response_id: str | None) -> EndpointRequest:
    upstream_path = path + ("?" + query.decode("latin-1") if query else "")
    if spec.body is Body.NONE:
        return EndpointRequest(spec.name, "", False, body, None, spec=spec, method=spec.method,
                               upstream_path=upstream_path, response_id=response_id)
    if spec.body is Body.MULTIPART:
        fields = multipart_fields(body, content_type)
        model = fields.get("model", "")
        if not model:
            raise GatewayError(400, "the form must have a 'model' field", param="model")
        stream = fields.get("stream", "").strip().lower() == "true"
        state = EventStreamState(AUDIO_STREAM) if stream else None
        return EndpointRequest(spec.name, model, stream, body, state, spec=spec, upstream_path=upstream_path,
                               content_type=content_type or b"")
    payload = parse_json_object(body)
    for member in spec.required:
        if member not in payload:
            raise GatewayError(400, f"'{member}' is required on {spec.name}", param=member)
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise GatewayError(400, f"'stream' must be a boolean, got {type(stream).__name__}", param="stream")
    previous = payload.get("previous_response_id") if spec.stream == "responses" else None
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise GatewayError(400, "'previous_response_id' must be a response id (a string)", param="previous_response_id")
    state = EventStreamState(spec.stream) if stream and spec.stream else None
    return EndpointRequest(spec.name, payload["model"], bool(stream and spec.stream), body, state, spec=spec,
                           upstream_path=upstream_path, response_id=previous)


def multipart_fields(body: bytes, content_type: bytes | None) -> dict[str, str]:
    """The short text fields of a multipart/form-data body (RFC 7578); file parts are skipped."""
    if not content_type or not content_type.lower().startswith(b"multipart/form-data"):
        raise GatewayError(400, "this route takes a multipart/form-data upload (a file and a 'model' field)",
                           code="invalid_content_type")
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise GatewayError(400, "the multipart/form-data content type has no boundary", code="invalid_content_type")
    delimiter = b"--" + found.group(1)
    fields: dict[str, str] = {}
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        name = _FORM_NAME.search(head)
        if name is None or b"filename=" in head.lower() or len(value) > MAX_FORM_VALUE + 2:
            continue
        try:
            fields[name.group(1).decode()] = value.removesuffix(b"\r\n").decode()
        except UnicodeDecodeError:
            raise GatewayError(400, f"form field '{name.group(1).decode('latin-1')}' is not UTF-8 text",
                               param=name.group(1).decode("latin-1")) from None
    return fields
