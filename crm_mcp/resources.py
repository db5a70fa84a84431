"""Resources: the `crm://` templates, `crm://backends`, and reading them with each file's real MIME type.

The SDK's template decorator gives every resource of a template one fixed MIME type; an attachment
can be anything, so `server.CrmServer` routes `crm://` reads here instead, and this module also
describes the templates for `resources/templates/list`.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.types import Resource, ResourceTemplate

from crm_mcp.app import CrmApp
from crm_mcp.backends.base import Download
from crm_mcp.errors import BackendError, TooLargeError
from crm_mcp.progress import Progress
from crm_mcp.uris import BACKENDS_URI, FILE_TEMPLATE, PHOTO_TEMPLATE, parse_crm_uri

__all__ = [
    "backends_document",
    "list_resources",
    "list_templates",
    "open_resource",
    "read_all",
    "read_resource",
    "too_large_message",
]


def list_templates() -> list[ResourceTemplate]:
    """The two templates; their `mimeType` is omitted because each file has its own."""
    return [
        ResourceTemplate(
            uri_template=FILE_TEMPLATE,
            name="crm_file",
            title="CRM file",
            description=(
                "The bytes of a file attached to a CRM record, with the file's own MIME type. "
                "file_id comes from list_case_files or upload_attachment."
            ),
        ),
        ResourceTemplate(
            uri_template=PHOTO_TEMPLATE,
            name="contact_photo",
            title="Contact photo",
            description="A contact's current photo (image bytes). contact_id comes from find_records.",
        ),
    ]


def list_resources() -> list[Resource]:
    return [
        Resource(
            uri=BACKENDS_URI,
            name="backends",
            title="Configured CRM backends",
            description="JSON: each configured backend's name, vendor and what it supports.",
            mime_type="application/json",
        )
    ]


def backends_document(app: CrmApp) -> list[dict[str, object]]:
    """What `list_backends` and `crm://backends` show: never any setting beyond name and vendor."""
    return [
        {
            "name": name,
            "vendor": backend.vendor,
            "default": name == app.settings.default_backend,
            "capabilities": app.capabilities(name).model_dump(),
        }
        for name, backend in app.backends.items()
    ]


@asynccontextmanager
async def open_resource(app: CrmApp, uri: str) -> AsyncIterator[Download]:
    """Open the byte stream behind a file or photo URI of this server."""
    ref = parse_crm_uri(uri)
    backend = app.backend(ref.backend)
    opener = backend.open_file if ref.kind == "file" else backend.open_contact_photo
    async with opener(ref.id) as download:
        yield download


async def read_all(download: Download, limit: int, progress: Progress | None = None) -> bytes:
    """Collect a download into memory, refusing anything over `limit` bytes as soon as it shows:
    before the first byte when the size is announced, else at the chunk that passes the limit (the
    rest is never read). A stream that ends short of its announced size is an error, not a file.

    The chunks are gathered in a `BytesIO` because its `getvalue()` hands over its own buffer when
    nothing else references it: the file is in memory once, where `bytes(bytearray)` held it twice
    (a 20 MiB read peaked 20 MiB higher)."""
    if download.size is not None and download.size > limit:
        raise TooLargeError(too_large_message(download.name, download.size, limit))
    buffer = io.BytesIO()
    received = 0
    async for chunk in download.chunks:
        received += len(chunk)
        if received > limit:
            raise TooLargeError(too_large_message(download.name, None, limit))
        buffer.write(chunk)
        if progress is not None:
            await progress(received, download.size)
    if download.size is not None and received != download.size:
        raise BackendError(
            f"the CRM sent {received:,} bytes of {download.name!r} but announced {download.size:,}; "
            "the transfer was incomplete, so nothing is returned. Try again."
        )
    return buffer.getvalue()


async def read_resource(app: CrmApp, uri: str, progress: Progress | None = None) -> ReadResourceContents:
    """Read any `crm://` resource: the backends document, a file or a photo."""
    if uri.strip() == BACKENDS_URI:
        text = json.dumps({"backends": backends_document(app)}, indent=2)
        return ReadResourceContents(content=text, mime_type="application/json")
    async with open_resource(app, uri) as download:
        data = await read_all(download, app.settings.limits.max_transfer_bytes, progress)
        return ReadResourceContents(content=data, mime_type=download.mime_type)


def too_large_message(name: str, size: int | None, limit: int) -> str:
    """Why a file cannot be read (size None: its size was not announced and the read stopped at the limit)."""
    what = f"is {size:,} bytes, over" if size is not None else "has no announced size and grew past"
    return (
        f"{name!r} {what} this server's transfer limit of {limit:,} bytes (limits.max_transfer_bytes), so it "
        "cannot be read through resources/read or read_file. save_file streams files to disk but has the same "
        "limit: ask the server's administrator to raise limits.max_transfer_bytes."
    )
