"""Reading a multipart upload as it arrives: straight to the upload folder, never past the limit.

FastAPI's ``File()`` would read the whole body into a temporary file outside the data directory
before the route could look at its size. Here the declared ``Content-Length`` is checked before
a byte is read, a chunked body is cut off as soon as it passes the limit, and the file part is
hashed and written into ``uploads/tmp`` (``indexer.uploads``) as it streams in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import BodyTimeout
from indexer.uploads import IncomingFile, StoredUpload, UploadFolder
from retrieval.errors import InvalidInput, UnsupportedFormat, UploadTooLarge
from retrieval.store import COLLECTION_PATTERN

FILE_FIELD = "file"
TEXT_FIELDS = ("metadata", "password", "collection")
MAX_TEXT_FIELD = 64 * 1024  # bytes of one text field
FORM_OVERHEAD = 1 << 20  # what a body may hold beside the file: boundaries, headers, fields
_FLUSH = 1 << 20  # write the file part to disk (off the event loop) by this much
MAX_BOUNDARY = 70  # bytes of a multipart boundary (RFC 2046)

OPENAPI_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [FILE_FIELD],
                "properties": {
                    FILE_FIELD: {
                        "type": "string",
                        "format": "binary",
                        "minLength": 1,
                        "description": "A PDF, a PNG/JPEG/TIFF/WebP image, or a Word, PowerPoint, "
                        "Excel, OpenDocument, RTF or HTML file (converted by LibreOffice where "
                        "it is installed; others: 415).",
                    },
                    "metadata": {
                        "type": "string",
                        "description": "A JSON object kept with the document.",
                    },
                    "password": {"type": "string", "description": "Password of an encrypted PDF."},
                    "collection": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 64,
                        "pattern": COLLECTION_PATTERN,
                    },
                },
                "additionalProperties": False,  # any other field is refused (422)
            }
        }
    },
}


@dataclass
class ReceivedUpload:
    upload: StoredUpload
    filename: str
    fields: dict[str, str] = field(default_factory=dict)


async def receive_upload(
    request: Request,
    folder: UploadFolder,
    limit: int,
    *,
    idle_s: float = 30.0,
    min_bytes_s: float = 0.0,
) -> ReceivedUpload:
    """Parse the multipart body of ``request``, storing its file part in ``folder``. A body
    that sends nothing for ``idle_s``, or averages under ``min_bytes_s`` once it has run that
    long, is refused (``BodyTimeout``): a stalling client holds no socket and no partial file."""
    mb = limit / 2**20
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInput("Content-Length must be a number of bytes")
        if int(declared) > limit + FORM_OVERHEAD:
            raise UploadTooLarge(
                f"the upload is {int(declared) / 2**20:.1f} MB; the limit is {mb:g} MB"
            )
    content_type, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UnsupportedFormat(
            "send the document as multipart/form-data with a 'file' part "
            "(curl -F file=@report.pdf ...)"
        )
    if len(boundary) > MAX_BOUNDARY:
        raise InvalidInput(f"the multipart boundary is {len(boundary)} bytes; the limit is 70")
    reader = _FormReader(folder, limit)
    try:
        parser = MultipartParser(boundary, reader.callbacks())
        received = 0
        async for chunk in _timed(request.stream(), idle_s, min_bytes_s):
            received += len(chunk)
            if received > limit + FORM_OVERHEAD:
                raise UploadTooLarge(f"the upload is larger than the {mb:g} MB limit")
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise InvalidInput(f"the multipart body is malformed: {exc}") from None
            reader.raise_error()
            if reader.buffered >= _FLUSH:
                await run_in_threadpool(reader.flush)
        try:
            parser.finalize()
        except FormParserError as exc:
            raise InvalidInput(f"the multipart body is malformed: {exc}") from None
        reader.raise_error()
        if reader.file is None:
            raise InvalidInput(
                f"the form has no '{FILE_FIELD}' part: attach the document as '{FILE_FIELD}'"
            )
        if not reader.finished:
            raise InvalidInput("the multipart body ended before its closing boundary")
        await run_in_threadpool(reader.flush)
        upload = await run_in_threadpool(reader.file.commit)
        return ReceivedUpload(upload, reader.filename, reader.fields)
    finally:
        if reader.file is not None:
            reader.file.discard()


async def _timed(
    chunks: AsyncIterator[bytes], idle_s: float, min_bytes_s: float
) -> AsyncIterator[bytes]:
    """``chunks``, each within ``idle_s`` of the last, at ``min_bytes_s`` on average from
    ``idle_s`` on."""
    start, received = time.monotonic(), 0
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), idle_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise BodyTimeout(
                f"the upload sent nothing for {idle_s:g} s; send the file in one go"
            ) from None
        received += len(chunk)
        elapsed = time.monotonic() - start
        if min_bytes_s and elapsed > idle_s and received < min_bytes_s * elapsed:
            raise BodyTimeout(
                f"the upload is arriving at {received / elapsed / 1024:.1f} KB/s; the "
                f"minimum is {min_bytes_s / 1024:g} KB/s"
            )
        yield chunk


class _FormReader:
    """The parser's callbacks: headers of each part, text fields, the file part's bytes."""

    def __init__(self, folder: UploadFolder, limit: int) -> None:
        self.folder = folder
        self.limit = limit
        self.fields: dict[str, str] = {}
        self.file: IncomingFile | None = None
        self.filename = "upload"
        self.finished = False
        self._pending = bytearray()
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._part: str | None = None
        self._is_file = False
        self._text = bytearray()
        self._error: Exception | None = None

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        if self._pending and self.file is not None:
            data, self._pending = bytes(self._pending), bytearray()
            self.file.write(data)

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc

    def _part_begin(self) -> None:
        self._headers, self._part, self._is_file, self._text = {}, None, False, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._part = name
        if name == FILE_FIELD:
            if self.file is not None:
                return self._fail(InvalidInput(f"send one '{FILE_FIELD}' part per upload"))
            filename = options.get(b"filename", b"upload").decode("utf-8", "replace")
            self.filename = filename.replace("\\", "/").rsplit("/", 1)[-1] or "upload"
            self._is_file = True
            try:
                self.file = self.folder.incoming(self.filename, self.limit)
            except OSError as exc:
                self._fail(exc)
        elif name not in TEXT_FIELDS:
            self._fail(
                InvalidInput(
                    f"unknown form field '{name[:40]}': send {FILE_FIELD} and optionally "
                    + ", ".join(TEXT_FIELDS)
                )
            )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._error is not None:
            return
        if self._is_file:
            self._pending += data[start:end]
            if len(self._pending) > self.limit:  # flushed later; refuse before holding more
                self._fail(UploadTooLarge(f"{self.filename}: larger than the upload limit"))
            return
        self._text += data[start:end]
        if len(self._text) > MAX_TEXT_FIELD:
            self._fail(InvalidInput(f"form field '{self._part}' is larger than 64 KB"))

    def _part_end(self) -> None:
        if self._error is not None or self._is_file or self._part is None:
            return
        try:
            self.fields[self._part] = self._text.decode("utf-8")
        except UnicodeDecodeError:
            self._fail(InvalidInput(f"form field '{self._part}' is not UTF-8 text"))

    def _end(self) -> None:
        self.finished = True
