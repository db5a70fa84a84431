"""The eight tools: validated arguments → one backend call → a structured result plus text a model can read.

Every result carries `structuredContent` (matching the advertised `outputSchema`) and a text block
that is complete on its own — names, ids, sizes, MIME types and URIs — because some clients show
the model only the text. Files are returned as `resource_link` blocks, never as inline bytes,
except a contact photo small enough for `limits.inline_bytes`.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import (
    BlobResourceContents,
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    ToolAnnotations,
)
from pydantic import Field

from crm_mcp._tasks import write_behind
from crm_mcp.app import CrmApp
from crm_mcp.backends.base import FindType, RecordType
from crm_mcp.content import is_image, is_text
from crm_mcp.errors import BackendError, InvalidInputError, TooLargeError, UnsupportedError
from crm_mcp.models import (
    BackendInfo,
    BindPhotoResult,
    CaseFilesResult,
    ContactPhotoResult,
    FileInfo,
    FindRecordsResult,
    FoundRecord,
    ListBackendsResult,
    PhotoInfo,
    PreviewInfo,
    ReadFileResult,
    SaveFileResult,
    UploadResult,
)
from crm_mcp.previews import InlinePhoto, inline_photo
from crm_mcp.progress import Progress, ThrottledProgress
from crm_mcp.resources import open_resource, read_all, too_large_message
from crm_mcp.sources import (
    SourceContext,
    StreamDigest,
    check_file_name,
    make_source,
    open_source,
    resolve_writable,
)
from crm_mcp.uris import parse_crm_uri

__all__ = ["register_tools"]

BackendArg = Annotated[
    str,
    Field(description="Name of a configured CRM backend (see list_backends). Leave out to use the default backend."),
]
SourcePath = Annotated[
    str,
    Field(description="Source, option 1: path of a local file inside the server's allowed folders (files.roots)."),
]
SourceUrl = Annotated[str, Field(description="Source, option 2: an http(s) URL to download the file from.")]
SourceResource = Annotated[
    str,
    Field(
        description="Source, option 3: a crm:// file or photo URI of this server (from list_case_files etc.), "
        "to copy a file between records or between CRMs."
    ),
]
SourceBase64 = Annotated[
    str,
    Field(description="Source, option 4: the file's bytes as base64. Only for small files; prefer path or url."),
]
SourceText = Annotated[str, Field(description="Source, option 5: the file's content as text (stored as UTF-8).")]
MimeArg = Annotated[
    str,
    Field(description="MIME type such as 'application/pdf'. Leave out to detect it from the bytes, then the name."),
]

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=True)


def _app(ctx: Context[Any, Any]) -> CrmApp:
    app: CrmApp = ctx.request_context.lifespan_context
    return app


def _size(size: int | None) -> str:
    return "size unknown" if size is None else f"{size:,} bytes"


def _file_line(info: FileInfo) -> str:
    if info.kind == "link":
        return f"- {info.name} — link to {info.url or 'another record'} (no bytes; file_id={info.file_id})"
    added = f", added {info.created_at}" if info.created_at else ""
    return (
        f"- {info.name} — {info.mime_type}, {_size(info.size)}{added}; file_id={info.file_id}; "
        f"resource_uri={info.resource_uri}"
    )


def _link(info: FileInfo) -> ResourceLink | None:
    if info.resource_uri is None:
        return None
    return ResourceLink(
        type="resource_link",
        uri=info.resource_uri,
        name=info.name,
        mime_type=info.mime_type,
        size=info.size,
        description=f"CRM file {info.file_id}",
    )


def _photo_link(contact_id: str, info: PhotoInfo) -> ResourceLink:
    return ResourceLink(
        type="resource_link",
        uri=info.resource_uri,
        name=f"photo of contact {contact_id}",
        mime_type=info.mime_type,
        size=info.size,
    )


def _result(structured: Any, text: str, *blocks: ContentBlock | None) -> CallToolResult:
    content: list[ContentBlock] = [TextContent(type="text", text=text)]
    content.extend(block for block in blocks if block is not None)
    return CallToolResult(content=content, structured_content=structured.model_dump(mode="json"))


# ------------------------------------------------------------------------------------------- tools


async def list_case_files(
    case_id: Annotated[str, Field(description="Id of the case (use find_records to turn a case number into an id).")],
    ctx: Context[Any, Any],
    limit: Annotated[int, Field(ge=1, le=200, description="Files per page, 1-200.")] = 50,
    cursor: Annotated[str, Field(description="next_cursor from the previous page; leave out for page 1.")] = "",
    backend: BackendArg = "",
) -> Annotated[CallToolResult, CaseFilesResult]:
    """List the files attached to a case, with each file's name, MIME type, size and resource URI.

    Read a file with read_file (small files), save_file (to disk) or resources/read on its resource_uri.
    A case that does not exist is an error, not an empty list."""
    crm = _app(ctx).backend(backend)
    page = await crm.list_case_files(case_id, limit=limit, cursor=cursor or None)
    files = [FileInfo.of(crm.name, entry) for entry in page.files]
    result = CaseFilesResult(backend=crm.name, case_id=case_id, files=files, next_cursor=page.next_cursor)
    lines = [f"Case {case_id} on backend '{crm.name}': {len(files)} file(s) on this page."]
    lines += [_file_line(info) for info in files]
    if page.next_cursor:
        lines.append(f'More files: call list_case_files again with cursor="{page.next_cursor}".')
    return _result(result, "\n".join(lines), *(_link(info) for info in files))


async def get_contact_photo(
    contact_id: Annotated[str, Field(description="Id of the contact (use find_records to look up a name).")],
    ctx: Context[Any, Any],
    backend: BackendArg = "",
) -> Annotated[CallToolResult, ContactPhotoResult]:
    """Get a contact's photo: metadata, a resource link to the full image and, when it is small
    enough, the image itself. photo is null when the contact has no photo."""
    app = _app(ctx)
    crm = app.backend(backend)
    photo = await crm.get_contact_photo(contact_id)
    if photo is None:
        result = ContactPhotoResult(backend=crm.name, contact_id=contact_id, photo=None)
        return _result(result, f"Contact {contact_id} on backend '{crm.name}' has no photo.")
    info = PhotoInfo.of(crm.name, contact_id, photo)
    result = ContactPhotoResult(backend=crm.name, contact_id=contact_id, photo=info)
    text = (
        f"Contact {contact_id} on backend '{crm.name}' has a photo: {info.mime_type}, {_size(info.size)}; "
        f"photo_id={info.photo_id}; resource_uri={info.resource_uri}"
    )
    link = _photo_link(contact_id, info)
    limits = app.settings.limits
    shown = await inline_photo(crm, contact_id, info.mime_type, info.size, limits)
    result.shown_inline = shown.kind
    text += _inline_note(shown, limits.inline_bytes)
    image = None
    if shown.data is not None and shown.mime_type is not None:
        image = ImageContent(type="image", data=base64.b64encode(shown.data).decode(), mime_type=shown.mime_type)
    if shown.kind == "preview" and shown.data is not None and shown.mime_type is not None:
        result.preview = PreviewInfo(
            mime_type=shown.mime_type, size=len(shown.data), width=shown.width, height=shown.height
        )
    return _result(result, text, image, link)


def _inline_note(shown: InlinePhoto, limit: int) -> str:
    if shown.kind == "photo":
        return " (image included inline)"
    if shown.kind == "preview":
        return (
            f". Shown inline: a {shown.width}x{shown.height} preview ({shown.mime_type}, {len(shown.data or b''):,} "
            f"bytes) of the {shown.original_width}x{shown.original_height} photo, which is over the inline limit of "
            f"{limit:,} bytes (limits.inline_bytes); the full photo is at the resource link."
        )
    return f". Not inline: {shown.reason}. The full photo is at the resource link (inline limit {limit:,} bytes)."


async def upload_attachment(
    record_id: Annotated[str, Field(description="Id of the record to attach the file to.")],
    file_name: Annotated[str, Field(description="File name with extension as it should appear in the CRM.")],
    ctx: Context[Any, Any],
    record_type: Annotated[
        RecordType, Field(description="Kind of record: 'case' (default), 'contact' or 'account'.")
    ] = "case",
    mime_type: MimeArg = "",
    path: SourcePath = "",
    url: SourceUrl = "",
    resource_uri: SourceResource = "",
    content_base64: SourceBase64 = "",
    content_text: SourceText = "",
    backend: BackendArg = "",
) -> Annotated[CallToolResult, UploadResult]:
    """Attach a file to a case, contact or account. Give exactly one source: path, url, resource_uri,
    content_text or content_base64. Returns the new file's id and resource URI."""
    check_file_name(file_name)
    source = make_source(
        path=path, url=url, resource_uri=resource_uri, content_base64=content_base64, content_text=content_text
    )
    app = _app(ctx)
    crm = app.backend(backend)
    _refuse_read_only(app, crm.name, "upload_attachment")
    if record_type not in crm.capabilities.upload_record_types:
        allowed = ", ".join(crm.capabilities.upload_record_types)
        raise UnsupportedError(f"backend '{crm.name}' cannot attach files to a {record_type} (it supports: {allowed})")
    context = SourceContext(app=app, progress=ThrottledProgress(ctx, "uploaded"))
    digest = StreamDigest()
    async with open_source(source, context, file_name=file_name, mime_type=mime_type, digest=digest) as upload:
        entry = await crm.upload_attachment(record_type, record_id, upload)
    _verify_sent(digest, upload.size, upload.name, entry.size, f"file_id={entry.file_id}")
    info = FileInfo.of(crm.name, entry)
    result = UploadResult(
        **info.model_dump(), backend=crm.name, record_type=record_type, record_id=record_id, sha256=digest.hexdigest()
    )
    text = (
        f"Attached to {record_type} {record_id} on backend '{crm.name}':\n{_file_line(info)}\n"
        f"Verified: {digest.size:,} bytes sent, sha256={result.sha256}"
    )
    if info.name != upload.name:
        text += f"\nNote: the CRM stored the file as {info.name!r}, not {upload.name!r} (its name limits)."
    return _result(result, text, _link(info))


async def bind_photo(
    contact_id: Annotated[str, Field(description="Id of the contact whose photo to set.")],
    ctx: Context[Any, Any],
    file_name: Annotated[str, Field(description="Name for the image, e.g. 'photo.jpg'.")] = "",
    mime_type: MimeArg = "",
    path: SourcePath = "",
    url: SourceUrl = "",
    resource_uri: SourceResource = "",
    content_base64: SourceBase64 = "",
    content_text: SourceText = "",
    backend: BackendArg = "",
) -> Annotated[CallToolResult, BindPhotoResult]:
    """Set (replace) a contact's photo from an image. Give exactly one source: path, url, resource_uri
    or content_base64. The previous photo is replaced."""
    source = make_source(
        path=path, url=url, resource_uri=resource_uri, content_base64=content_base64, content_text=content_text
    )
    app = _app(ctx)
    crm = app.backend(backend)
    _refuse_read_only(app, crm.name, "bind_photo")
    if not crm.capabilities.bind_photo:
        raise UnsupportedError(f"backend '{crm.name}' ({crm.vendor}) cannot set contact photos")
    context = SourceContext(app=app, progress=ThrottledProgress(ctx, "uploaded"))
    digest = StreamDigest()
    async with open_source(source, context, file_name=file_name, mime_type=mime_type, digest=digest) as upload:
        if not is_image(upload.mime_type):
            raise InvalidInputError(
                f"a photo must be an image, but the source is {upload.mime_type}; give a PNG, JPEG, GIF or WebP"
            )
        photo = await crm.bind_photo(contact_id, upload)
    # The stored size is not compared: some CRMs re-encode or resize photos they are given.
    _verify_sent(digest, upload.size, upload.name, None, f"photo_id={photo.photo_id}")
    info = PhotoInfo.of(crm.name, contact_id, photo)
    result = BindPhotoResult(backend=crm.name, contact_id=contact_id, photo=info, sha256=digest.hexdigest())
    text = (
        f"Photo of contact {contact_id} on backend '{crm.name}' is now {info.mime_type}, {_size(info.size)}; "
        f"photo_id={info.photo_id}; resource_uri={info.resource_uri}\n"
        f"Verified: {digest.size:,} bytes sent, sha256={result.sha256}"
    )
    link = _photo_link(contact_id, info)
    return _result(result, text, link)


async def find_records(
    record_type: Annotated[FindType, Field(description="'case' or 'contact'.")],
    query: Annotated[
        str,
        Field(
            min_length=1,
            max_length=200,
            description="A contact's name (e.g. 'Alexander Wilson'), or a case's number or words of its subject.",
        ),
    ],
    ctx: Context[Any, Any],
    limit: Annotated[int, Field(ge=1, le=100, description="Most records to return, 1-100.")] = 20,
    backend: BackendArg = "",
) -> Annotated[CallToolResult, FindRecordsResult]:
    """Find cases or contacts by name, number or subject, to get the id the other tools need."""
    crm = _app(ctx).backend(backend)
    if not query.strip():
        raise InvalidInputError("query is blank: give a name, a case number or words of a subject")
    found = await crm.find_records(record_type, query.strip(), limit=limit)
    records = [FoundRecord(id=record.id, title=record.title) for record in found]
    result = FindRecordsResult(backend=crm.name, record_type=record_type, query=query, records=records)
    if not records:
        text = f"No {record_type} on backend '{crm.name}' matches {query!r}. Try fewer or other words."
    else:
        lines = [f"{len(records)} {record_type}(s) on backend '{crm.name}' match {query!r}:"]
        lines += [f"- {record.title} — id={record.id}" for record in records]
        text = "\n".join(lines)
    return _result(result, text)


async def read_file(
    resource_uri: Annotated[str, Field(description="A crm:// file or photo URI returned by another tool.")],
    ctx: Context[Any, Any],
) -> Annotated[CallToolResult, ReadFileResult]:
    """Read a CRM file for clients that cannot read MCP resources: text files come back as text,
    small binary files as an embedded resource. Larger files: use save_file."""
    app = _app(ctx)
    limits = app.settings.limits
    parse_crm_uri(resource_uri)
    async with open_resource(app, resource_uri) as download:
        textual = is_text(download.mime_type)
        limit = max(limits.inline_text_bytes, limits.inline_bytes) if textual else limits.inline_bytes
        transfer_limit = limits.max_transfer_bytes
        if download.size is not None and download.size > transfer_limit:
            raise TooLargeError(too_large_message(download.name, download.size, transfer_limit))
        try:
            data = await read_all(download, min(limit, transfer_limit), ThrottledProgress(ctx, "read"))
        except TooLargeError:
            if transfer_limit <= limit:
                raise TooLargeError(too_large_message(download.name, download.size, transfer_limit)) from None
            size = _size(download.size) if download.size is not None else f"over {limit:,} bytes"
            raise TooLargeError(
                f"{download.name!r} ({download.mime_type}, {size}) is too large to return inline (limit {limit:,} "
                "bytes). Use save_file to write it to a local folder, or read the resource with resources/read."
            ) from None
    text: str | None = None
    if textual:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    if text is None and len(data) > limits.inline_bytes:
        raise TooLargeError(
            f"{download.name!r} is not UTF-8 text and is {len(data):,} bytes, over the inline limit of "
            f"{limits.inline_bytes:,} bytes. Use save_file to write it to a local folder."
        )
    returned_as: Literal["text", "resource"] = "text" if text is not None else "resource"
    result = ReadFileResult(
        resource_uri=resource_uri,
        name=download.name,
        mime_type=download.mime_type,
        size=len(data),
        returned_as=returned_as,
        text=text,
        sha256=hashlib.sha256(data).hexdigest(),
    )
    header = f"{download.name} ({download.mime_type}, {len(data):,} bytes, sha256={result.sha256}) from {resource_uri}"
    if text is not None:
        return _result(result, header + " — its text follows.", TextContent(type="text", text=text))
    blob = BlobResourceContents(uri=resource_uri, mime_type=download.mime_type, blob=base64.b64encode(data).decode())
    return _result(
        result, header + " — attached as an embedded resource.", EmbeddedResource(type="resource", resource=blob)
    )


async def save_file(
    resource_uri: Annotated[str, Field(description="A crm:// file or photo URI returned by another tool.")],
    path: Annotated[
        str,
        Field(
            description="Where to write: a file path, or an existing folder to save under the file's own name. "
            "Must be inside the server's allowed folders (files.roots); relative paths start at the first one."
        ),
    ],
    ctx: Context[Any, Any],
    overwrite: Annotated[bool, Field(description="Replace an existing file at path.")] = False,
) -> Annotated[CallToolResult, SaveFileResult]:
    """Download a CRM file to a local path, streaming it to disk (any size up to the transfer limit).
    Returns the path written, the size and the SHA-256 of the bytes."""
    app = _app(ctx)
    parse_crm_uri(resource_uri)
    # Refuse a path outside files.roots before asking the CRM for anything (the name is provisional:
    # saving into a folder uses the file's own name, known once it is open).
    resolve_writable(path, app.settings.files.roots, "file.bin")
    progress = ThrottledProgress(ctx, "saved")
    async with open_resource(app, resource_uri) as download:
        target = resolve_writable(path, app.settings.files.roots, download.name)
        if target.exists() and not overwrite:
            raise InvalidInputError(f"{target} already exists: pass overwrite=true, or choose another path")
        size, digest = await _write_atomically(
            download.chunks, target, overwrite, download.size, app.settings.limits.max_transfer_bytes, progress
        )
        mime = download.mime_type
    result = SaveFileResult(resource_uri=resource_uri, path=str(target), size=size, sha256=digest, mime_type=mime)
    text = f"Saved {resource_uri} to {target}: {size:,} bytes, {mime}, sha256={digest}"
    return _result(result, text)


async def list_backends(ctx: Context[Any, Any]) -> Annotated[CallToolResult, ListBackendsResult]:
    """List the configured CRM backends, which one is the default, and what each supports."""
    app = _app(ctx)
    infos = [
        BackendInfo(
            name=name,
            vendor=crm.vendor,
            default=name == app.settings.default_backend,
            capabilities=app.capabilities(name),
        )
        for name, crm in app.backends.items()
    ]
    result = ListBackendsResult(default_backend=app.settings.default_backend, backends=infos)
    lines = [f"{len(infos)} backend(s); default: '{app.settings.default_backend}'."]
    for info in infos:
        caps = info.capabilities
        lines.append(
            f"- {info.name} ({info.vendor}{', default' if info.default else ''}): attach to "
            f"{', '.join(caps.upload_record_types)}; photos: {'yes' if caps.contact_photos else 'no'}; "
            f"find: {', '.join(caps.find_record_types)}; ids: {caps.id_format}"
            + ("; read-only (no uploads, no photo changes)" if caps.read_only else "")
        )
    return _result(result, "\n".join(lines))


# --------------------------------------------------------------------------------------- internals


def _refuse_read_only(app: CrmApp, name: str, tool: str) -> None:
    """A backend configured with `read_only = true` is never written to, whatever the model asks."""
    if app.read_only(name):
        raise UnsupportedError(
            f"backend '{name}' is read-only (read_only = true in its configuration): {tool} cannot change it; "
            "list_backends shows which backends accept writes"
        )


WRITE_PIECE = 1024 * 1024
"""Bytes gathered before each write of `save_file`: every write is a worker-thread round trip, and
vendors yield small chunks (≈48 KiB of decoded base64), so writing per chunk costs more than the disk.
A gathered piece never exceeds it, so pieces stay under the stdio server's `_memory.MMAP_THRESHOLD`
(heap memory, reused); a chunk that is a piece on its own (the local store's) goes as it is."""


class _HashedFile:
    """The temporary file of `save_file`, hashing what it writes in the same worker-thread call:
    hashlib releases the GIL for large pieces, so the event loop meanwhile fetches the next one."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()

    def write(self, piece: bytes) -> None:
        self._file.write(piece)
        self._hash.update(piece)

    def finish(self) -> None:
        """Flush to stable storage before the rename, so a crash never leaves a short file under the name."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def close(self) -> None:
        self._file.close()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


async def _write_atomically(
    chunks: Any, target: Path, overwrite: bool, expected: int | None, limit: int, progress: Progress
) -> tuple[int, str]:
    """Stream into a temporary file beside `target`, then move it into place in one step, so a
    failed or cut transfer never leaves a partial file under the requested name."""
    fd, temp_name = await anyio.to_thread.run_sync(
        lambda: tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    )
    temp = Path(temp_name)
    sink = _HashedFile(fd)
    try:
        try:
            size = await _write_behind(chunks, sink, limit, expected, progress)
            await anyio.to_thread.run_sync(sink.finish)
        finally:
            sink.close()
        if expected is not None and size != expected:
            raise InvalidInputError(f"the CRM sent {size:,} bytes but announced {expected:,}; nothing was saved")
        await anyio.to_thread.run_sync(_place, temp, target, overwrite)
    except BaseException:
        temp.unlink(missing_ok=True)  # noqa: ASYNC240 -- must run even when cancelled
        raise
    return size, sink.hexdigest()


async def _write_behind(chunks: Any, sink: _HashedFile, limit: int, expected: int | None, progress: Progress) -> int:
    """Gather chunks into `WRITE_PIECE` pieces and write (and hash) each in a worker thread while the
    next chunks arrive (`_tasks.write_behind`). Returns the byte count; the chunk that passes `limit`
    is never written."""
    size = 0

    async def gathered() -> AsyncIterator[bytes]:
        nonlocal size
        pending: list[bytes] = []
        held = 0
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise TooLargeError(
                    f"the file is over this server's transfer limit of {limit:,} bytes (limits.max_transfer_bytes)"
                )
            if pending and held + len(chunk) > WRITE_PIECE:
                yield _joined(pending)
                pending, held = [], 0
            pending.append(chunk)
            held += len(chunk)
            if held >= WRITE_PIECE:
                yield _joined(pending)
                pending, held = [], 0
            await progress(size, expected)
        if pending:
            yield _joined(pending)

    async def write(piece: bytes) -> None:
        await anyio.to_thread.run_sync(sink.write, piece)

    await write_behind(gathered(), write)
    return size


def _joined(pending: list[bytes]) -> bytes:
    """One piece from gathered chunks; a chunk that is a piece on its own is passed on without a copy."""
    return pending[0] if len(pending) == 1 else b"".join(pending)


def _verify_sent(digest: StreamDigest, size: int, name: str, stored: int | None, where: str) -> None:
    """The backend must have read every byte of the upload, and a CRM that reports the stored size
    must report that many: otherwise the stored copy is not the file, and the caller must know."""
    if digest.size != size:
        raise BackendError(
            f"verification failed: the CRM took {digest.size:,} of the {size:,} bytes of {name!r} and stored it "
            f"({where}); that copy is incomplete, so remove it in the CRM and upload again"
        )
    if stored is not None and stored != size:
        raise BackendError(
            f"verification failed: {size:,} bytes of {name!r} were sent but the CRM reports {stored:,} stored "
            f"({where}); check that copy in the CRM and upload again"
        )


def _place(temp: Path, target: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(temp, target)
        return
    try:
        os.link(temp, target)  # fails if target appeared meanwhile: never clobber without overwrite
    except FileExistsError:
        raise InvalidInputError(f"{target} already exists: pass overwrite=true, or choose another path") from None
    temp.unlink()


WRITE_TOOLS = frozenset({"upload_attachment", "bind_photo"})
"""The tools that change a CRM; `crm-mcp serve --read-only` leaves them out. save_file stays: it
writes only local files inside files.roots, never to a CRM."""

_TOOLS: tuple[tuple[Any, str, ToolAnnotations], ...] = (
    (list_case_files, "List a case's files", READ_ONLY),
    (get_contact_photo, "Get a contact's photo", READ_ONLY),
    (
        upload_attachment,
        "Attach a file to a record",
        ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True),
    ),
    (
        bind_photo,
        "Set a contact's photo",
        ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=True),
    ),
    (find_records, "Find cases or contacts", READ_ONLY),
    (read_file, "Read a CRM file", READ_ONLY),
    (
        save_file,
        "Save a CRM file to disk",
        # destructive only with overwrite=true, which replaces a local file
        ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False),
    ),
    (list_backends, "List configured CRMs", READ_ONLY),
)


def register_tools(server: MCPServer[Any], *, read_only: bool = False) -> None:
    """Add the eight tools with their titles and annotations (six with `read_only`: no WRITE_TOOLS)."""
    for fn, title, hints in _TOOLS:
        if read_only and fn.__name__ in WRITE_TOOLS:
            continue
        # cleandoc: the docstring's indentation would otherwise reach the model as stray spaces.
        server.add_tool(fn, title=title, description=inspect.cleandoc(fn.__doc__ or ""), annotations=hints)
