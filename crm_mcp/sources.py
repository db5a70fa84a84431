"""Upload sources — a local path, a URL, one of this server's resources, base64 or text — as streams.

Exactly one source per call. Whatever the source, the backend receives an `Upload`: a name, a MIME
type, an exact size and an async iterator of chunks, checked against `limits.max_transfer_bytes`
while it flows. Paths are confined to `files.roots` (symlinks resolved); URLs must be http(s) and,
unless `files.allow_private_urls`, must not reach loopback, private or link-local addresses — not
directly, not through DNS and not through a redirect.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
import re
import stat
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal

import anyio
import httpx
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from crm_mcp.app import CrmApp
from crm_mcp.backends.base import Upload
from crm_mcp.content import OCTET_STREAM, SNIFF_BYTES, detect_mime, normalize_mime
from crm_mcp.errors import AccessDeniedError, InvalidInputError, NotFoundError, TooLargeError
from crm_mcp.http import new_client
from crm_mcp.progress import Progress
from crm_mcp.resources import open_resource

__all__ = [
    "CHUNK_SIZE",
    "FILE_PIECE",
    "DigestedChunks",
    "SourceContext",
    "SourceSpec",
    "StreamDigest",
    "check_file_name",
    "make_source",
    "open_source",
    "resolve_readable",
    "resolve_writable",
]

CHUNK_SIZE = 256 * 1024
FILE_PIECE = 1024 * 1024
"""Bytes per read of a local file (a path source, a spooled download): each read is a worker-thread
round trip, and at 256 KiB a 200 MiB upload paid ~800 of them. It must stay under the stdio server's
`_memory.MMAP_THRESHOLD`: a block that size gets its own mapping, faulted in page by page and unmapped
again on every read (at a 1 MiB threshold, 1 MiB pieces cost 51,200 page faults per 200 MiB)."""
MAX_REDIRECTS = 5
SourceKind = Literal["path", "url", "resource_uri", "content_base64", "content_text"]
_SOURCE_FIELDS: tuple[SourceKind, ...] = ("path", "url", "resource_uri", "content_base64", "content_text")
_GENERIC_TYPES = {OCTET_STREAM, "text/plain", "application/zip", "application/x-ole-storage", "binary/octet-stream"}
_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?:;[^,]*)?;base64,", re.IGNORECASE)
_BAD_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f/\\]")


class SourceSpec(BaseModel):
    """The source arguments of `upload_attachment` and `bind_photo`: exactly one must be given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = None
    url: str | None = None
    resource_uri: str | None = None
    content_base64: str | None = None
    content_text: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceSpec:
        given = [name for name in _SOURCE_FIELDS if getattr(self, name) is not None]
        if len(given) != 1:
            options = ", ".join(_SOURCE_FIELDS)
            found = "none" if not given else " and ".join(given)
            raise ValueError(f"give exactly one source ({options}); got {found}")
        return self

    @property
    def kind(self) -> SourceKind:
        return next(name for name in _SOURCE_FIELDS if getattr(self, name) is not None)

    @property
    def value(self) -> str:
        value: str = getattr(self, self.kind)
        return value


def make_source(**values: str | None) -> SourceSpec:
    """Build a `SourceSpec` from tool arguments, where an empty string means "not given", turning
    pydantic's error into a message a model can act on."""
    try:
        return SourceSpec(**{key: value for key, value in values.items() if value})
    except ValidationError as exc:
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise InvalidInputError(
            f"{message}. Use path for a local file, url for a web address, resource_uri to copy a file "
            "this server listed, content_text for text, content_base64 only for small binary files."
        ) from None


@dataclass(frozen=True)
class SourceContext:
    """What opening a source needs from the running server."""

    app: CrmApp
    progress: Progress | None = None

    @property
    def roots(self) -> tuple[Path, ...]:
        return self.app.settings.files.roots

    @property
    def limit(self) -> int:
        return self.app.settings.limits.max_transfer_bytes


class StreamDigest:
    """SHA-256 and byte count of the bytes a backend pulled from an upload, taken as they pass: a
    200 MB upload is hashed without being read twice or held in memory."""

    def __init__(self) -> None:
        self.hasher = hashlib.sha256()
        self.size = 0

    def wrap(self, chunks: AsyncIterator[bytes]) -> DigestedChunks:
        return DigestedChunks(chunks, self)

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()


class DigestedChunks:
    """An upload's chunks, counted and hashed as the backend pulls them.

    A backend that touches every byte in a worker thread anyway (the local store writes each piece
    there) calls `take_hashing()` and feeds the hash itself, in the same call: the bytes are then
    hashed once, off the event loop, instead of twice (here and in the store), one of them blocking
    the loop. The digest stays the caller's: `StreamDigest.hexdigest()` reads the same hash object."""

    def __init__(self, chunks: AsyncIterator[bytes], digest: StreamDigest) -> None:
        self._chunks = chunks
        self._digest = digest
        self._hashing = True

    def __aiter__(self) -> DigestedChunks:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._chunks.__anext__()
        if self._hashing:
            self._digest.hasher.update(chunk)
        self._digest.size += len(chunk)
        return chunk

    def take_hashing(self) -> hashlib._Hash:
        """Hand the hash to the consumer, which must then `update` it with every chunk it pulls from
        now on, in order (the digest keeps counting bytes itself)."""
        self._hashing = False
        return self._digest.hasher

    async def aclose(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass
class _Raw:
    name: str | None
    size: int
    declared_mime: str | None
    chunks: AsyncIterator[bytes]


@asynccontextmanager
async def open_source(
    spec: SourceSpec,
    context: SourceContext,
    *,
    file_name: str | None = None,
    mime_type: str | None = None,
    digest: StreamDigest | None = None,
) -> AsyncIterator[Upload]:
    """Open the chosen source as an `Upload`, closing whatever it opened (file, HTTP response) after.

    With `digest`, the bytes the backend reads are counted and hashed on their way."""
    name = check_file_name(file_name) if file_name else None
    mime = normalize_mime(mime_type) if mime_type else None
    opener = _OPENERS[spec.kind]
    async with opener(spec.value, context) as raw:
        final_name = name or check_file_name(raw.name or "upload")
        chunks = _exact(raw.chunks, raw.size, final_name)
        if mime is None:
            head, chunks = await _peek(chunks, SNIFF_BYTES)
            mime = detect_mime(head, final_name)
            if mime in _GENERIC_TYPES and raw.declared_mime and raw.declared_mime not in _GENERIC_TYPES:
                mime = raw.declared_mime
        if context.progress is not None:
            chunks = _reporting(chunks, raw.size, context.progress)
        if digest is not None:
            chunks = digest.wrap(chunks)
        yield Upload(name=final_name, mime_type=mime, size=raw.size, chunks=chunks)


def check_file_name(name: str) -> str:
    """A file name must be a plain name: no folders, no control characters, at most 255 characters."""
    cleaned = name.strip()
    if not cleaned or cleaned in (".", ".."):
        raise InvalidInputError("file_name is empty: give a name with an extension, e.g. 'report.pdf'")
    if _BAD_NAME_CHARS.search(cleaned):
        raise InvalidInputError(
            f"file_name {name!r} must be a plain file name like 'report.pdf', without folders or control characters"
        )
    if len(cleaned) > 255:
        raise InvalidInputError(f"file_name is {len(cleaned)} characters long; the limit is 255")
    return cleaned


# ---------------------------------------------------------------------------------------------- paths


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _roots_text(roots: tuple[Path, ...]) -> str:
    return ", ".join(str(root) for root in roots)


def _absolute(value: str, roots: tuple[Path, ...]) -> Path:
    if not value.strip() or "\x00" in value:
        raise InvalidInputError("path is empty or contains a NUL character: give a file path inside files.roots")
    path = Path(value).expanduser()
    return path if path.is_absolute() else roots[0] / path


def resolve_readable(value: str, roots: tuple[Path, ...]) -> Path:
    """The real path of an existing regular file inside `roots` (symlinks resolved), or a clear refusal.

    Relative paths are taken relative to the first root."""
    candidate = _absolute(value, roots)
    try:
        real = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise NotFoundError(f"no file at {value!r} (looked for {candidate})") from None
    except (OSError, RuntimeError) as exc:
        raise InvalidInputError(f"cannot resolve path {value!r}: {exc.strerror or exc}") from None
    if not _inside(real, roots):
        raise AccessDeniedError(
            f"path {value!r} resolves to {real}, which is outside the folders this server may read "
            f"(files.roots: {_roots_text(roots)}). Copy the file into one of them first."
        )
    mode = real.stat().st_mode
    if stat.S_ISDIR(mode):
        raise InvalidInputError(f"path {value!r} is a folder; give the path of a file inside it")
    if not stat.S_ISREG(mode):
        raise InvalidInputError(f"path {value!r} is not a regular file (device, socket or pipe); refusing to read it")
    return real


def resolve_writable(value: str, roots: tuple[Path, ...], default_name: str) -> Path:
    """Where save_file may write: inside `roots`, in an existing folder, never through a symlink.

    An existing folder means "save into it under the file's own name"."""
    candidate = _absolute(value, roots)
    try:
        if candidate.is_dir():
            candidate = candidate / check_file_name(default_name)
        parent = candidate.parent.resolve(strict=True)
    except FileNotFoundError:
        raise NotFoundError(
            f"the folder of {value!r} does not exist; save into an existing folder inside files.roots "
            f"({_roots_text(roots)})"
        ) from None
    except OSError as exc:
        raise InvalidInputError(f"cannot resolve path {value!r}: {exc.strerror or exc}") from None
    target = parent / candidate.name
    if not _inside(parent, roots):
        raise AccessDeniedError(
            f"path {value!r} is outside the folders this server may write (files.roots: {_roots_text(roots)})"
        )
    if target.is_symlink():
        raise AccessDeniedError(f"path {value!r} is a symbolic link; save_file never writes through links")
    if target.exists() and not target.is_file():
        raise InvalidInputError(f"path {value!r} exists and is not a regular file")
    return target


@asynccontextmanager
async def _open_path(value: str, context: SourceContext) -> AsyncIterator[_Raw]:
    real = resolve_readable(value, context.roots)

    def _open() -> tuple[IO[bytes], int]:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise InvalidInputError(f"path {value!r} is not a regular file")
        return os.fdopen(fd, "rb"), info.st_size

    try:
        handle, size = await anyio.to_thread.run_sync(_open)
    except OSError as exc:
        raise InvalidInputError(f"cannot open {value!r}: {exc.strerror or exc}") from None
    _check_size(real.name, size, context.limit)
    async with anyio.wrap_file(handle) as file:
        yield _Raw(real.name, size, None, _file_chunks(file))


async def _file_chunks(file: anyio.AsyncFile[bytes]) -> AsyncIterator[bytes]:
    while chunk := await file.read(FILE_PIECE):
        yield chunk


# ----------------------------------------------------------------------------------------------- urls


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def _check_address(url: httpx.URL, allow_private: bool) -> None:
    if url.scheme not in ("http", "https"):
        raise InvalidInputError(f"url scheme {url.scheme!r} is not allowed: only http and https URLs can be fetched")
    if not url.host:
        raise InvalidInputError(f"url {_shown(url)!r} has no host")
    if allow_private:
        return
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        infos = await anyio.getaddrinfo(url.host, port, type=0)
    except OSError:
        raise InvalidInputError(f"cannot resolve the host of {_shown(url)!r}: check the URL") from None
    for info in infos:
        address = str(info[4][0])
        if not _is_public(address):
            raise AccessDeniedError(
                f"url {_shown(url)!r} points to a private, loopback or link-local address ({address}); this server "
                "only fetches public addresses unless files.allow_private_urls is true"
            )


def _shown(url: httpx.URL) -> str:
    """A URL as it may appear in a message: no user info, no query (presigned URLs carry secrets there)."""
    return str(url.copy_with(userinfo=b"", query=None, fragment=None))


def _declared_type(value: str | None) -> str | None:
    """A server's Content-Type, if it is a well-formed one (a bad header is no reason to refuse a file)."""
    if not value:
        return None
    try:
        return normalize_mime(value)
    except InvalidInputError:
        return None


def _name_from_response(response: httpx.Response) -> str | None:
    disposition = response.headers.get("content-disposition", "")
    if match := re.search(r"filename\*=UTF-8''([^;]+)", disposition, re.IGNORECASE):
        return PurePosixPath(httpx.URL("x:/" + match.group(1)).path).name or None
    if match := re.search(r'filename="?([^";]+)"?', disposition, re.IGNORECASE):
        return PurePosixPath(match.group(1).replace("\\", "/")).name or None
    return PurePosixPath(response.url.path).name or None


@asynccontextmanager
async def _open_url(value: str, context: SourceContext) -> AsyncIterator[_Raw]:
    try:
        url = httpx.URL(value.strip())
    except (httpx.InvalidURL, TypeError, ValueError):
        raise InvalidInputError("url is not a valid URL: give a full http(s) address") from None
    allow_private = context.app.settings.files.allow_private_urls
    async with new_client(headers={"Accept-Encoding": "identity"}) as client:
        for _ in range(MAX_REDIRECTS + 1):
            await _check_address(url, allow_private)
            try:
                response = await client.send(client.build_request("GET", url), stream=True)
            except httpx.HTTPError as exc:
                raise InvalidInputError(f"could not fetch {_shown(url)!r}: {type(exc).__name__}") from None
            if not response.is_redirect:
                break
            await response.aclose()
            location = response.headers.get("location")
            if not location:
                raise InvalidInputError(f"url {_shown(url)!r} redirected without saying where to")
            url = response.url.join(location)
        else:
            raise InvalidInputError(f"url {_shown(url)!r} redirected more than {MAX_REDIRECTS} times")
        try:
            if response.status_code != 200:
                raise InvalidInputError(
                    f"url {_shown(url)!r} answered HTTP {response.status_code}; check that it is a direct download link"
                )
            declared = _declared_type(response.headers.get("content-type"))
            name = _name_from_response(response)
            length = response.headers.get("content-length")
            if length is not None and length.isdigit():
                size = int(length)
                _check_size(name or _shown(url), size, context.limit)
                yield _Raw(name, size, declared, _response_chunks(response))
            else:
                async with _spooled(_response_chunks(response), context.limit, name or _shown(url)) as (chunks, size):
                    yield _Raw(name, size, declared, chunks)
        finally:
            await response.aclose()


async def _response_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """Raw body bytes (no decompression: sizes must match Content-Length); a broken transfer is the
    caller's clear error, not a crash."""
    try:
        async for chunk in response.aiter_raw(CHUNK_SIZE):
            yield chunk
    except httpx.HTTPError as exc:
        raise InvalidInputError(
            f"the download from {_shown(response.url)!r} broke off ({type(exc).__name__})"
        ) from None


# ------------------------------------------------------------------------------------ other sources


@asynccontextmanager
async def _open_resource_uri(value: str, context: SourceContext) -> AsyncIterator[_Raw]:
    async with open_resource(context.app, value) as download:
        if download.size is not None:
            _check_size(download.name, download.size, context.limit)
            yield _Raw(download.name, download.size, download.mime_type, download.chunks)
        else:
            async with _spooled(download.chunks, context.limit, download.name) as (chunks, size):
                yield _Raw(download.name, size, download.mime_type, chunks)


@asynccontextmanager
async def _open_base64(value: str, context: SourceContext) -> AsyncIterator[_Raw]:
    declared = None
    text = value.strip()
    if match := _DATA_URL.match(text):
        declared = normalize_mime(match["mime"]) if match["mime"] else None
        text = text[match.end() :]
    text = re.sub(r"\s+", "", text)
    if len(text) * 3 // 4 > context.limit + 2:
        _check_size("content_base64", len(text) * 3 // 4, context.limit)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(
            "content_base64 is not valid base64 (standard alphabet, '=' padding); for text use content_text, "
            "for a local file use path"
        ) from None
    _check_size("content_base64", len(data), context.limit)
    yield _Raw(None, len(data), declared, _one_chunk(data))


@asynccontextmanager
async def _open_text(value: str, context: SourceContext) -> AsyncIterator[_Raw]:
    data = value.encode("utf-8")
    _check_size("content_text", len(data), context.limit)
    yield _Raw(None, len(data), None, _one_chunk(data))


_OPENERS = {
    "path": _open_path,
    "url": _open_url,
    "resource_uri": _open_resource_uri,
    "content_base64": _open_base64,
    "content_text": _open_text,
}


# ----------------------------------------------------------------------------------- stream helpers


def _check_size(name: str, size: int, limit: int) -> None:
    if size > limit:
        raise TooLargeError(
            f"{name!r} is {size:,} bytes, over this server's transfer limit of {limit:,} bytes "
            "(limits.max_transfer_bytes)"
        )


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), CHUNK_SIZE):
        yield data[start : start + CHUNK_SIZE]


async def _exact(chunks: AsyncIterator[bytes], size: int, name: str) -> AsyncIterator[bytes]:
    """Pass chunks through, failing if the source delivers more or fewer bytes than it announced —
    a truncated or overlong body must never be stored as if it were the file."""
    seen = 0
    async for chunk in chunks:
        seen += len(chunk)
        if seen > size:
            raise InvalidInputError(f"source of {name!r} sent more than the {size:,} bytes it announced; not stored")
        yield chunk
    if seen != size:
        raise InvalidInputError(f"source of {name!r} ended after {seen:,} of {size:,} bytes; not stored")


async def _peek(chunks: AsyncIterator[bytes], count: int) -> tuple[bytes, AsyncIterator[bytes]]:
    """Read at least `count` bytes (or all there is) and return them with a stream that replays them."""
    held: list[bytes] = []
    total = 0
    async for chunk in chunks:
        held.append(chunk)
        total += len(chunk)
        if total >= count:
            break

    async def replay() -> AsyncIterator[bytes]:
        for chunk in held:
            yield chunk
        async for chunk in chunks:
            yield chunk

    return b"".join(held)[:count], replay()


async def _reporting(chunks: AsyncIterator[bytes], size: int, progress: Progress) -> AsyncIterator[bytes]:
    done = 0
    async for chunk in chunks:
        done += len(chunk)
        await progress(done, size)
        yield chunk


@asynccontextmanager
async def _spooled(
    chunks: AsyncIterator[bytes], limit: int, name: str
) -> AsyncIterator[tuple[AsyncIterator[bytes], int]]:
    """Copy a stream of unknown length to a temporary file (not memory) to learn its size."""
    handle = await anyio.to_thread.run_sync(tempfile.TemporaryFile)
    async with anyio.wrap_file(handle) as file:
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            _check_size(name, size, limit)
            await file.write(chunk)
        await file.seek(0)
        yield _file_chunks(file), size
