"""The backend contract: one protocol every CRM implements, and the vendor-neutral models it speaks.

Tools and resources only ever see these types. Vendor protocols (OData, REST, SOAP, SQLite) stay
inside their backend module, so adding a vendor is one module plus one registry line.

Bytes cross this interface as streams, never as whole files: a download is an async context
manager yielding a `Download` (an async iterator of chunks with its name, MIME type and size), and an
upload is an `Upload` whose chunks the backend pulls while it sends them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import httpx
from pydantic import BaseModel, ConfigDict, Field

from crm_mcp.errors import InvalidInputError
from crm_mcp.http import Retries, Timeouts

__all__ = [
    "Backend",
    "BackendContext",
    "BackendSettings",
    "Capabilities",
    "Download",
    "FileEntry",
    "FilePage",
    "FindType",
    "Photo",
    "Record",
    "RecordType",
    "RemoteSettings",
    "Upload",
    "decode_cursor",
    "encode_cursor",
    "require_guid",
    "require_opaque_id",
    "shown_id",
]

RecordType = Literal["case", "contact", "account"]
"""Records a file can be attached to. A vendor supports a subset (see `Capabilities`)."""

FindType = Literal["case", "contact"]
"""Records `find_records` can look up."""

_UNRESERVED = re.compile(r"^[A-Za-z0-9._~-]{1,200}$")


class BackendSettings(BaseModel):
    """Base of every vendor's `[backends.<name>]` table: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vendor: str
    read_only: bool = False
    """`read_only = true`: the write tools (upload_attachment, bind_photo) refuse this backend, so a
    CRM can be offered for reading without trusting the model with changes to it."""


class RemoteSettings(BackendSettings):
    """Base of the settings of a backend that talks to a CRM over HTTP: how its client behaves on a
    slow or failing network (see `crm_mcp.http`). Every key has a default that suits a CRM on the
    internet; `max_connections` is the per-backend concurrency limit."""

    timeouts: Timeouts = Timeouts()
    retries: Retries = Retries()
    max_connections: int = Field(default=20, ge=1, le=256)


class FileEntry(BaseModel):
    """One attachment as the CRM describes it.

    `file_id` is opaque to callers and uses only URI-unreserved characters, so it can stand in
    `crm://{backend}/files/{file_id}` unescaped. A `link` entry points somewhere else and has no bytes.
    """

    file_id: str
    name: str
    mime_type: str
    size: int | None = None
    created_at: datetime | None = None
    kind: Literal["file", "link"] = "file"
    url: str | None = None


class FilePage(BaseModel):
    """One page of a case's files; `next_cursor` is None on the last page."""

    files: list[FileEntry]
    next_cursor: str | None = None


class Photo(BaseModel):
    """A contact's current photo (metadata only; the bytes are read through `open_contact_photo`)."""

    photo_id: str
    mime_type: str
    size: int | None = None


class Record(BaseModel):
    """A record found by `find_records`: the id the other tools take, and a human title."""

    id: str
    title: str
    record_type: FindType


class Capabilities(BaseModel):
    """What a backend can do, shown by `list_backends` and `crm://backends`."""

    upload_record_types: list[RecordType] = Field(description="record types upload_attachment accepts")
    contact_photos: bool = Field(description="get_contact_photo works")
    bind_photo: bool = Field(description="bind_photo works")
    find_record_types: list[FindType] = Field(description="record types find_records accepts")
    id_format: str = Field(description="what a record id looks like on this backend")
    read_only: bool = Field(
        default=False, description="true: this server will not write to this backend (upload_attachment, bind_photo)"
    )


@dataclass
class Download:
    """An open stream of a file's bytes. `size` is None when the CRM does not say."""

    name: str
    mime_type: str
    size: int | None
    chunks: AsyncIterator[bytes]


@dataclass
class Upload:
    """Bytes on their way into a CRM. `size` is always known: sources without a length are spooled
    to a temporary file first, because most CRMs need the size before the bytes (Creatio's `Size`,
    Wello's `file_size`, EspoCRM's chunked upload). `chunks` can be iterated once."""

    name: str
    mime_type: str
    size: int
    chunks: AsyncIterator[bytes]


@dataclass(frozen=True)
class BackendContext:
    """What the server hands every backend it opens."""

    home: Path
    """crm-mcp's data directory (`$CRM_MCP_HOME` or the platform's user data directory)."""
    max_transfer_bytes: int
    """Largest upload or download; backends refuse bigger payloads with `TooLargeError`."""
    transport: httpx.AsyncBaseTransport | None = None
    """For tests: the httpx transport vendor backends send through (e.g. `httpx.ASGITransport` around
    a simulator). None in production: real network connections."""


@runtime_checkable
class Backend(Protocol):
    """A configured CRM connection. Opened once per server (`async with`) and shared by all calls,
    so every method must be safe under concurrent use.

    Every method validates the ids it receives before sending anything to the CRM and raises
    `InvalidInputError` with the expected format; a record that does not exist is `NotFoundError`.
    """

    vendor: ClassVar[str]
    settings_model: ClassVar[type[BackendSettings]]
    name: str

    @property
    def capabilities(self) -> Capabilities: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def check(self) -> str:
        """Log in (or open the store) and return a one-line description; raise on failure."""
        ...

    async def list_case_files(self, case_id: str, *, limit: int, cursor: str | None) -> FilePage: ...

    def open_file(self, file_id: str) -> AbstractAsyncContextManager[Download]: ...

    async def get_contact_photo(self, contact_id: str) -> Photo | None: ...

    def open_contact_photo(self, contact_id: str) -> AbstractAsyncContextManager[Download]: ...

    async def upload_attachment(self, record_type: RecordType, record_id: str, upload: Upload) -> FileEntry: ...

    async def bind_photo(self, contact_id: str, upload: Upload) -> Photo: ...

    async def find_records(self, record_type: FindType, query: str, *, limit: int) -> list[Record]: ...


_CURSOR_VERSION = 1
_MAX_CURSOR_LENGTH = 4096
_BAD_CURSOR = (
    "cursor is not one this backend issued for this case (copy it exactly from next_cursor); "
    "call list_case_files without a cursor to start from the first page"
)


def encode_cursor(case_id: str, *position: str | int) -> str:
    """An opaque page cursor: the case it belongs to plus the backend's position (offsets, keys)."""
    raw = json.dumps([_CURSOR_VERSION, case_id, *position], separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, case_id: str, shape: tuple[type[str] | type[int], ...]) -> list[Any]:
    """The position `encode_cursor` put in `cursor`, checked against the case and the expected types
    (ints must be >= 0); `InvalidInputError` for anything this server did not issue for this case."""
    if not cursor or len(cursor) > _MAX_CURSOR_LENGTH:
        raise InvalidInputError(_BAD_CURSOR)
    try:
        payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8"))
    except (binascii.Error, ValueError):
        raise InvalidInputError(_BAD_CURSOR) from None
    if (
        not isinstance(payload, list)
        or len(payload) != 2 + len(shape)
        or payload[:2] != [_CURSOR_VERSION, case_id]
        or not all(_is(part, kind) for part, kind in zip(payload[2:], shape, strict=True))
    ):
        raise InvalidInputError(_BAD_CURSOR)
    return payload[2:]


def _is(value: object, kind: type[str] | type[int]) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return isinstance(value, kind)


_SHOWN_ID_LENGTH = 60


def shown_id(value: object) -> str:
    """A refused id as an error message quotes it: `repr`, cut to a readable length, so a model
    that sent a whole document as an id gets a sentence back, not the document."""
    text = repr(value)
    return (
        text if len(text) <= _SHOWN_ID_LENGTH else f"{text[: _SHOWN_ID_LENGTH - 1]}… ({len(str(value)):,} characters)"
    )


def require_guid(value: str, what: str) -> str:
    """Return `value` as a canonical lower-case GUID, or raise a clear `InvalidInputError`."""
    try:
        return str(uuid.UUID(value.strip()))
    except (ValueError, AttributeError):
        raise InvalidInputError(
            f"{what} {shown_id(value)} is not a valid id: this backend uses GUIDs such as "
            "'3f2504e0-4f89-11d3-9a0c-0305e82c3301'. Use find_records to look the id up."
        ) from None


def require_opaque_id(value: str, what: str) -> str:
    """Check an id that travels inside a `crm://` URI: URI-unreserved characters only."""
    # "." and ".." are unreserved too, but in a URL path they mean "here" and "up": never an id.
    if not isinstance(value, str) or not _UNRESERVED.match(value) or not value.strip("."):
        raise InvalidInputError(
            f"{what} {shown_id(value)} is not a valid id: ids use only letters, digits and '-._~' "
            "(copy the id exactly as list_case_files or find_records returned it)."
        )
    return value
