"""A multipart/form-data parser that keeps every part in memory (python-multipart's
MultipartParser, with our callbacks).

Why not Starlette's ``request.form()`` (what FastAPI's ``UploadFile`` uses too): it still
spools each file part over 1 MiB (``MultiPartParser.spool_max_size = 1024 * 1024`` in
Starlette 1.10) to a temporary file; user bytes must never reach disk here.
tests/reliability/test_exposure.py sends a ~2 MiB part and checks that no process of the
service holds a file with its bytes (and that the check finds a spooling app's file). The body
is already bounded by max_body_mb before parsing, so holding it in memory is bounded too. The
OpenAPI document still declares the multipart body (serve_app/api/openapi.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from serve_app.common.errors import ApiError


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytearray = field(default_factory=bytearray)


QUOTED = re.compile(r"b?'(?:[^'\\]|\\.)*'|b?\"(?:[^\"\\]|\\.)*\"")


def parse_multipart(body: bytes, content_type: str, max_parts: int) -> list[Part]:
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "multipart/form-data without a boundary parameter")

    parts: list[Part] = []
    headers: dict[bytes, bytes] = {}
    header_field = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        headers.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        if len(parts) >= max_parts:
            raise ApiError(413, "too_many_parts", f"more than {max_parts} parts in one request")
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        ctype = headers.get(b"content-type")
        parts.append(
            Part(
                name=name,
                filename=filename.decode("utf-8", "replace") if filename is not None else None,
                content_type=ctype.decode("latin-1") if ctype else None,
            )
        )

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data.extend(data[start:end])

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as e:
        # The parser quotes the byte it stumbled on: the upload's own content never goes back
        # into an answer (or a log), so quoted values are masked.
        where = QUOTED.sub("<byte>", str(e))
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {where}") from e
    return parts
