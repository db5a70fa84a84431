"""EspoCRM over its REST API (`/api/v1/`), for 8.4 and later.

How EspoCRM keeps files, and what this module does about it:

- A case's files are its `attachments` field (attachment-multiple): `GET Case/{id}` carries
  `attachmentsIds`, `attachmentsNames` and `attachmentsTypes`; sizes come from `GET Attachment/{id}`
  (the list call that could fetch them at once is admin-only). Attachments never change (new content
  is a new attachment with a new id), so each backend remembers the size, creation time and type of
  the last `_META_CACHE_ENTRIES` it looked up: a repeated listing costs the case read (and the
  stream-notes request) only. Concurrent listings that miss the same id share one lookup.
  EspoCRM 9.1+ also answers `GET Case/{id}/streamAttachments` (files posted to the case's stream);
  whether the server has it is found out by asking, never assumed from a version. Before 9.1 the
  request lands on the generic related-records route, which fails on the unknown link with a bare
  500 (a 404 would be as clear): that answer is remembered for a while, then the route is asked again.
  `GET Case/{id}/attachments` answers an empty list on real servers, so it is never used.
- Uploading is two calls: `POST Attachment` (JSON with a data URL) and a link. The JSON body is
  streamed: the base64 text is produced on the fly in 3-byte-aligned pieces with an exact
  Content-Length, so a file never sits in memory whole. Above `chunk_threshold_bytes` EspoCRM's
  chunked upload is used (`isBeingUploaded` + `POST Attachment/chunk/{id}`).
- Linking to a case sends `attachmentsIds`, which REPLACES the list: the current ids are read
  first and sent with the new one; the case is re-read afterwards and, when a concurrent writer
  dropped the new id, linked once more. Where the case has a `versionNumber` (optimistic concurrency:
  on for Case from 9.1), it goes along as `X-Version-Number`, so a write based on a list someone
  else changed meanwhile is refused (409) instead of unlinking their file; the case is then re-read
  and the link retried once. Links to one case from this process are serialised.
  A link the CRM refused deletes the uploaded attachment, so nothing is left orphaned. A link whose
  answer was lost (timeout, reset) or whose call was cancelled is checked by reading the record
  again: linked means done (never undone, never reported as a failure that invites a duplicate).
  The one thing no API user can clean up is an attachment whose `POST Attachment` answer was lost:
  it is linked nowhere and listed nowhere (EspoCRM's cleanup job removes such orphans when
  `cleanupOrphanAttachments` is on).
- Contacts and accounts have no attachment field in core EspoCRM: files for them are posted to the
  record's stream as a Note (`parentType: Note`, field `attachments`), which works out of the box.
- The contact photo is a custom image field (core Contact has none), named by
  `contact_photo_field` (e.g. `cPhoto`, attribute `cPhotoId`). EspoCRM checks that the declared
  type, the name's extension and the bytes agree, so the type is taken from the bytes and the
  name's extension fixed to match.
- 401 is never retried: EspoCRM locks out the client's whole IP after 10 failed logins a minute.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Sequence
from contextlib import aclosing, asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import anyio
import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from crm_mcp.backends._streams import (
    BASE64_PIECE,
    base64_encoded,
    base64_length,
    checked_download,
    checked_upload,
)
from crm_mcp.backends.base import (
    BackendContext,
    BackendSettings,
    Capabilities,
    Download,
    FileEntry,
    FilePage,
    FindType,
    Photo,
    Record,
    RecordType,
    RemoteSettings,
    Upload,
    decode_cursor,
    encode_cursor,
    shown_id,
)
from crm_mcp.content import sniff
from crm_mcp.errors import (
    AuthenticationError,
    BackendError,
    ConflictError,
    CrmError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    TooLargeError,
    UnsupportedError,
)
from crm_mcp.http import new_client

__all__ = ["EspoCrmBackend", "EspoCrmSettings"]

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_SIZE = 200
"""EspoCRM's largest `maxSize` for list calls; above it the server answers 403."""
_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,35}$")
"""EspoCRM ids: 17 hex-like characters by default, or UUIDs when the instance is set up for them."""
_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,99}$")
_MAX_NAME = 255
_MAX_TYPE = 100
"""Attachment's `name` and `type` are varchar(255) and varchar(100); longer is a 400 validationFailure."""
_NOTHING_STORED = "; nothing was stored"
"""Said of an upload whose source failed `checked_upload`: the single POST never completed its body,
and a chunked upload's attachment is deleted again before the error reaches the caller."""
_STREAM_RECHECK_SECONDS = 900.0
"""How long a server that lacked `streamAttachments` is believed to lack it (it may be upgraded)."""
_monotonic = time.monotonic
"""The clock of that belief (a module attribute so tests can move it on)."""
_NO_ROUTE_STATUSES = frozenset({404, 405, 500, 501})
"""How servers without a route answer it (8.x/9.0: 500 from the generic related-records route)."""
_META_CACHE_ENTRIES = 4096
"""How many attachments' size, creation time and type one backend remembers (about 1 MiB). An
entry cannot go stale by a change: EspoCRM attachments are immutable, new content is a new id. It
can only outlive a deletion, and a deleted attachment also leaves its case's `attachmentsIds`, so it
is not listed again (the ones this backend deletes or replaces are forgotten at once). 4096 covers
some 80 cases of 50 files; past that the least recently listed ones are looked up again."""
_LOOKUPS_PER_LISTING = 8
"""`GET Attachment/{id}` requests one listing has in flight at once. The client's `max_connections`
(default 20) bounds the whole backend; this keeps one cold listing of many files from taking every
connection while downloads, uploads and other listings wait for the pool (and from sending 20
requests at once to a PHP-FPM pool that often has 5 to 10 workers). It costs a cold listing of 50
files 7 round trips instead of 3, once: after that the sizes come from the cache."""
_IMAGE_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "image/jpeg": (".jpg", ".jpeg"),
    "image/png": (".png",),
    "image/gif": (".gif",),
    "image/webp": (".webp",),
    "image/svg+xml": (".svg",),
    "image/avif": (".avif",),
}
"""Image types EspoCRM accepts in image fields, with the extensions it pairs them with."""
_PHOTO_FIELD_HELP = (
    "An EspoCRM administrator adds one in Administration → Entity Manager → Contact → Fields → Add Field "
    "(type Image, name 'photo'; EspoCRM names it 'cPhoto'), or through the API as admin: "
    'POST /api/v1/Admin/fieldManager/Contact {"name": "photo", "type": "image", "label": "Photo"}. '
    'Then set contact_photo_field = "cPhoto" in this backend\'s configuration.'
)


class EspoCrmSettings(RemoteSettings):
    """`[backends.<name>]` with `vendor = "espocrm"`.

    Authentication: `api_key` alone (API user, "API Key" method), `api_key` + `secret_key` (API user,
    "HMAC" method) or `username` + `password` (a regular user, Basic auth)."""

    vendor: Literal["espocrm"]
    url: str
    """The EspoCRM site, e.g. https://crm.example.com (`/api/v1` is added)."""
    api_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    contact_photo_field: str | None = None
    """Name of the Contact image field holding the photo, e.g. "cPhoto"; none: photos are off."""
    chunk_threshold_bytes: int = Field(default=4 * MiB, ge=1)
    """Files larger than this use EspoCRM's chunked upload (stays under PHP's post_max_size)."""
    chunk_size_bytes: int = Field(default=4 * MiB, ge=1024, le=64 * MiB)
    """Raw bytes per chunk (EspoCRM's own client uses `attachmentUploadChunkSize`, 4 MB)."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be the http(s) address of the EspoCRM site, e.g. https://crm.example.com")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must not contain a query, a fragment or user info (put credentials in api_key etc.)")
        path = parts.path.rstrip("/")
        path = path.removesuffix("/api/v1")
        return f"{parts.scheme}://{parts.netloc}{path}"

    @field_validator("contact_photo_field")
    @classmethod
    def _check_field(cls, value: str | None) -> str | None:
        if value is not None and not _FIELD.match(value):
            raise ValueError("must be an EspoCRM field name such as 'cPhoto' (letters and digits)")
        return value

    @model_validator(mode="after")
    def _check_auth(self) -> EspoCrmSettings:
        has_key = self.api_key is not None and bool(self.api_key.get_secret_value())
        has_user = bool(self.username) or self.password is not None
        if has_key and has_user:
            raise ValueError("give either api_key (API user) or username and password (regular user), not both")
        if not has_key and not has_user:
            raise ValueError(
                "no credentials: set api_key (and secret_key for HMAC) of an EspoCRM API user, or username and password"
            )
        if self.secret_key is not None and not has_key:
            raise ValueError("secret_key is for HMAC and needs the API user's api_key as well")
        if has_user and (not self.username or self.password is None):
            raise ValueError("Basic authentication needs both username and password")
        return self


# --------------------------------------------------------------------------------------- helpers


class _NoAnswer(BackendError):
    """The request went out but its answer did not arrive whole: the server may have acted on it."""


def _require_id(value: str, what: str) -> str:
    """An EspoCRM id, checked before anything is sent (no path tricks, no query strings)."""
    if not isinstance(value, str) or not _ID.match(value.strip()):
        raise InvalidInputError(
            f"{what} {shown_id(value)} is not a valid id: EspoCRM ids look like '6745a1c2b3d4e5f60' (17 letters and "
            "digits; UUIDs on some instances). Use find_records to look the id up."
        )
    return value.strip()


def _api_path(path: str) -> str:
    """The part of a request path EspoCRM signs: everything after `/api/v1`."""
    index = path.find("/api/v1/")
    return path[index + len("/api/v1") :] if index >= 0 else path


def hmac_header(api_key: str, secret_key: str, method: str, path: str) -> str:
    """`X-Hmac-Authorization` as EspoCRM checks it (8.4.1+): base64(key + ":" + hex HMAC-SHA256 of
    "METHOD /path"), the path taken after `/api/v1` and without the query string."""
    message = f"{method.upper()} {_api_path(path)}".encode()
    digest = hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()
    return base64.b64encode(f"{api_key}:{digest}".encode()).decode("ascii")


class _EspoAuth(httpx.Auth):
    """Adds EspoCRM's credentials to each request (HMAC signs each one separately)."""

    requires_request_body = False

    def __init__(self, settings: EspoCrmSettings) -> None:
        self._api_key = settings.api_key.get_secret_value() if settings.api_key else None
        self._secret = settings.secret_key.get_secret_value() if settings.secret_key else None
        self._basic = None
        if settings.username and settings.password is not None:
            raw = f"{settings.username}:{settings.password.get_secret_value()}"
            self._basic = "Basic " + base64.b64encode(raw.encode()).decode("ascii")

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._api_key and self._secret:
            request.headers["X-Hmac-Authorization"] = hmac_header(
                self._api_key, self._secret, request.method, request.url.path
            )
        elif self._api_key:
            request.headers["X-Api-Key"] = self._api_key
        elif self._basic:
            request.headers["Authorization"] = self._basic
        yield request


def _parse_time(value: Any) -> datetime | None:
    """EspoCRM's "Y-m-d H:i:s" (UTC) timestamps."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace(" ", "T"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _attachment_meta(data: Any) -> _AttachmentMeta | None:
    """The listing's part of a `GET Attachment/{id}` answer (None when it is no attachment)."""
    if not isinstance(data, dict):
        return None
    size = data.get("size")
    mime = data.get("type")
    return _AttachmentMeta(
        size=size if type(size) is int and size >= 0 else None,
        created_at=_parse_time(data.get("createdAt")),
        mime_type=mime if isinstance(mime, str) and mime else None,
        settled=type(size) is int and not data.get("isBeingUploaded"),
    )


def _sized(entry: FileEntry, meta: _AttachmentMeta) -> FileEntry:
    """`entry` with what `GET Attachment/{id}` adds to a case's field listing."""
    return entry.model_copy(
        update={
            "size": meta.size,
            "created_at": meta.created_at,
            "mime_type": entry.mime_type or meta.mime_type or "application/octet-stream",
        }
    )


def _essence(mime: str | None) -> str:
    return (mime or "").split(";", 1)[0].strip().lower()


def _with_extension(name: str, mime: str) -> str:
    """`name` with an extension EspoCRM pairs with `mime` (kept when it already fits)."""
    allowed = _IMAGE_EXTENSIONS[mime]
    path = PurePosixPath(name)
    if path.suffix.lower() in allowed:
        return name
    stem = path.stem if path.suffix else name
    return f"{stem or 'photo'}{allowed[0]}"


@dataclass(frozen=True, slots=True)
class _AttachmentMeta:
    """What a listing needs from `GET Attachment/{id}` and the case does not say."""

    size: int | None
    created_at: datetime | None
    mime_type: str | None
    settled: bool
    """False while a chunked upload is still under way (`isBeingUploaded`): then the size is the
    announced one and the upload may yet fail and be deleted, so it is not remembered."""


class _Lookup:
    """One `GET Attachment/{id}` under way, which concurrent listings wait for instead of repeating."""

    __slots__ = ("done", "failed", "meta", "stale")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.meta: _AttachmentMeta | None = None
        self.failed = True
        """Until the lookup finishes: an error or a cancellation leaves it set, and waiters try themselves."""
        self.stale = False
        """Set when the attachment is forgotten meanwhile: the answer is used once, never remembered."""


class _AttachmentMetaCache:
    """A bounded LRU of attachment metadata by id, for one backend (ids are only unique per CRM), with
    the lookups under way shared. Only answers are remembered: a 404, a 403 or an error never is."""

    def __init__(self, capacity: int = _META_CACHE_ENTRIES) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, _AttachmentMeta] = OrderedDict()
        self._lookups: dict[str, _Lookup] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, attachment_id: object) -> bool:
        return attachment_id in self._entries

    def remembered(self, attachment_id: str) -> _AttachmentMeta | None:
        """The remembered metadata (now the most recently used), or None: no waiting, no lookup."""
        meta = self._entries.get(attachment_id)
        if meta is not None:
            self._entries.move_to_end(attachment_id)
        return meta

    def forget(self, attachment_id: str) -> None:
        """The attachment was deleted or replaced here: never serve it from memory again."""
        self._entries.pop(attachment_id, None)
        lookup = self._lookups.get(attachment_id)
        if lookup is not None:
            lookup.stale = True

    async def get(
        self, attachment_id: str, fetch: Callable[[], Awaitable[_AttachmentMeta | None]]
    ) -> _AttachmentMeta | None:
        """The remembered metadata, or the answer of a lookup under way, or `fetch()`'s (None: not
        found or not allowed). A lookup that failed is not shared: each waiter then asks itself."""
        while True:
            meta = self.remembered(attachment_id)
            if meta is not None:
                return meta
            lookup = self._lookups.get(attachment_id)
            if lookup is None:
                break
            await lookup.done.wait()
            if not lookup.failed:
                return lookup.meta
        lookup = self._lookups[attachment_id] = _Lookup()
        try:
            meta = await fetch()
            lookup.meta, lookup.failed = meta, False
            if meta is not None and meta.settled and not lookup.stale:
                self._remember(attachment_id, meta)
            return meta
        finally:
            del self._lookups[attachment_id]
            lookup.done.set()

    def _remember(self, attachment_id: str, meta: _AttachmentMeta) -> None:
        self._entries[attachment_id] = meta
        self._entries.move_to_end(attachment_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


async def _peek(chunks: AsyncIterator[bytes], size: int) -> tuple[bytes, AsyncIterator[bytes]]:
    """The first `size` bytes of a stream, and the stream again from its start."""
    head = b""
    taken: list[bytes] = []
    async for chunk in chunks:
        taken.append(chunk)
        head += chunk
        if len(head) >= size:
            break

    async def again() -> AsyncIterator[bytes]:
        for chunk in taken:
            yield chunk
        async for chunk in chunks:
            yield chunk

    return head[:size], again()


async def _close_stream(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        with suppress(Exception):
            await aclose()


def _where(items: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """`where[...]` query parameters from nested filter items; values travel as parameters, never
    spliced into a query language."""
    params: list[tuple[str, str]] = []

    def add(prefix: str, item: dict[str, Any]) -> None:
        for key, value in item.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                for index, sub in enumerate(value):
                    add(f"{prefix}[{key}][{index}]", sub)
            elif isinstance(value, list):
                for index, sub in enumerate(value):
                    params.append((f"{prefix}[{key}][{index}]", str(sub)))
            else:
                params.append((f"{prefix}[{key}]", str(value)))

    for index, item in enumerate(items):
        add(f"where[{index}]", item)
    return params


# ------------------------------------------------------------------------------------------ backend


class EspoCrmBackend:
    """EspoCRM as a `Backend`."""

    vendor: ClassVar[str] = "espocrm"
    settings_model: ClassVar[type[BackendSettings]] = EspoCrmSettings

    def __init__(self, name: str, settings: EspoCrmSettings, context: BackendContext) -> None:
        self.name = name
        self.settings = settings
        self.context = context
        self._client: httpx.AsyncClient | None = None
        self._stream_attachments: bool | None = None
        """Whether the server has `Case/{id}/streamAttachments` (9.1+); None until found out."""
        self._stream_recheck_at = 0.0
        """Monotonic time after which a server found without the route is asked again."""
        self._link_locks: dict[str, anyio.Lock] = {}
        self._attachment_meta = _AttachmentMetaCache()
        """Per backend, not per module: attachment ids are only unique within one CRM."""

    @property
    def capabilities(self) -> Capabilities:
        photos = self.settings.contact_photo_field is not None
        return Capabilities(
            upload_record_types=["case", "contact", "account"],
            contact_photos=photos,
            bind_photo=photos,
            find_record_types=["case", "contact"],
            id_format="EspoCRM id, 17 letters and digits (e.g. 6745a1c2b3d4e5f60)",
        )

    # ------------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> EspoCrmBackend:
        client = new_client(
            base_url=f"{self.settings.url}/api/v1/",
            headers={"Accept": "application/json"},
            transport=self.context.transport,
            timeout=self.settings.timeouts,
            max_connections=self.settings.max_connections,
            retries=self.settings.retries,
        )
        client.auth = _EspoAuth(self.settings)
        self._client = client
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # ------------------------------------------------------------------------------- plumbing

    @property
    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise BackendError(f"backend '{self.name}' is not open (use it inside 'async with')")
        return self._client

    async def _send(self, request: httpx.Request, what: str, *, stream: bool = False) -> httpx.Response:
        """Send, once from here: passing failures (502/503/504, 429, a lost connection) are retried
        below, by the client's `RetryTransport`, where the shared rule allows. Transport failures become
        `BackendError` (never sent) or `_NoAnswer` (the outcome is unknown); HTTP errors are left to `_check`."""
        try:
            return await self._http.send(request, stream=stream)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol) as exc:
            raise BackendError(
                f"EspoCRM backend '{self.name}' could not be reached at {self.settings.url} while trying to "
                f"{what} ({type(exc).__name__}); check the url and that the server is up"
            ) from None
        except httpx.TimeoutException:
            raise _NoAnswer(
                f"EspoCRM backend '{self.name}' did not answer in time while trying to {what}; try again later"
            ) from None
        except (httpx.HTTPError, OSError) as exc:
            raise _NoAnswer(
                f"EspoCRM backend '{self.name}': the connection broke while trying to {what} "
                f"({type(exc).__name__}); try again later"
            ) from None

    async def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        missing: str | None = None,
        params: Any = None,
        json_body: Any = None,
        content: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One API call; its JSON answer, or the matching `CrmError`."""
        request = self._http.build_request(
            method, path, params=params, json=json_body, content=content, headers=headers
        )
        if isinstance(content, _ChunkBody):
            request.stream = content  # kept as itself: a replayable body the retry transport may send again
        response = await self._send(request, what)
        await self._check(response, what, missing)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise BackendError(
                f"EspoCRM backend '{self.name}' answered something that is not JSON while trying to {what} "
                f"(HTTP {response.status_code}); is {self.settings.url} really an EspoCRM site?"
            ) from None

    async def _check(self, response: httpx.Response, what: str, missing: str | None) -> None:
        if response.status_code < 400:
            if 300 <= response.status_code < 400:
                await response.aclose()
                raise BackendError(
                    f"EspoCRM backend '{self.name}' redirected the request to {what} (HTTP {response.status_code}); "
                    "check that url is the site's address (https, no trailing path)"
                )
            return
        await response.aread()
        raise self._error(response, what, missing)

    def _error(self, response: httpx.Response, what: str, missing: str | None) -> CrmError:
        status = response.status_code
        reason = " ".join(response.headers.get("X-Status-Reason", "").split())[:300]
        detail = _body_detail(response)
        said = detail if reason and detail.startswith(reason) else "; ".join(part for part in (reason, detail) if part)
        where = f"EspoCRM backend '{self.name}'"
        if status == 401 and reason == "second-step-required":
            return AuthenticationError(
                f"{where}: user '{self.settings.username}' has two-step verification, which a program cannot "
                "pass (HTTP 401). Use an API user instead (Administration → API Users; api_key, or api_key + "
                "secret_key for HMAC)."
            )
        if status == 401:
            return AuthenticationError(
                f"{where} rejected the credentials while trying to {what} (HTTP 401). Check api_key / secret_key "
                "(or username / password) and that the user is active and uses that authentication method. "
                "Not retried: EspoCRM blocks the client's IP for everyone after 10 failed logins in a minute."
            )
        if status == 403:
            if not said:
                return PermissionDeniedError(
                    f"{where} refused to {what} (HTTP 403, no reason given): the user's role may lack access to "
                    "this, or EspoCRM is blocking this IP after repeated failed logins (then wait a minute and "
                    "fix the credentials)"
                )
            if "exceed" in said.lower():
                return TooLargeError(f"{where} refused to {what}: {said} (HTTP 403)")
            return PermissionDeniedError(f"{where} refused to {what}: {said} (HTTP 403)")
        if status == 404:
            return NotFoundError(
                missing or f"{where} could not {what}: not found (HTTP 404{': ' + said if said else ''})"
            )
        if status == 409:
            suffix = f": {said}" if said else ""
            return ConflictError(
                f"{where} could not {what}: the record changed or already exists (HTTP 409{suffix}); "
                "read it again and retry"
            )
        if status == 400 and "exceed" in said.lower():
            return TooLargeError(f"{where} refused to {what}: {said} (HTTP 400)")
        if status == 400:
            return InvalidInputError(f"{where} rejected the request to {what}: {said or 'bad request'} (HTTP 400)")
        retry = response.headers.get("Retry-After")
        later = f"; the server asks to retry after {retry} s" if retry else "; try again later"
        return BackendError(f"{where} failed to {what}: HTTP {status}{': ' + said if said else ''}{later}")

    def _missing(self, what: str, record_id: str) -> str:
        hints = {
            "case": "use find_records with record_type='case' to look up the case id",
            "contact": "use find_records with record_type='contact' to look up the contact id",
            "account": "check the account id",
            "file": "use list_case_files to see a case's current files",
        }
        return f"{what} {record_id} was not found on backend '{self.name}'; {hints[what]}"

    def _lock(self, key: str) -> anyio.Lock:
        lock = self._link_locks.get(key)
        if lock is None:
            lock = self._link_locks[key] = anyio.Lock()
        return lock

    def _check_size(self, upload: Upload) -> None:
        limit = self.context.max_transfer_bytes
        if upload.size > limit:
            raise TooLargeError(
                f"{upload.name!r} is {upload.size:,} bytes, over this server's transfer limit of {limit:,} bytes "
                "(limits.max_transfer_bytes)"
            )

    # ---------------------------------------------------------------------------------- check

    async def check(self) -> str:
        data = await self._call("GET", "App/user", "log in (GET App/user)")
        user = (data or {}).get("user") or {}
        settings = (data or {}).get("settings") or {}
        mode = "HMAC" if self.settings.secret_key else "API key" if self.settings.api_key else "Basic auth"
        limit = settings.get("attachmentUploadMaxSize")
        photo = self.settings.contact_photo_field or "not configured"
        return (
            f"EspoCRM at {self.settings.url}: logged in as {user.get('userName', '?')} ({mode}); "
            f"upload limit {limit if limit is not None else '?'} MB; contact photo field: {photo}"
        )

    # ---------------------------------------------------------------------------------- files

    async def _get_record(self, entity: str, record_id: str, kind: str) -> dict[str, Any]:
        data = await self._call(
            "GET", f"{entity}/{record_id}", f"read {kind} {record_id}", missing=self._missing(kind, record_id)
        )
        if not isinstance(data, dict):
            raise BackendError(f"EspoCRM backend '{self.name}' answered {entity}/{record_id} with no record")
        return data

    async def list_case_files(self, case_id: str, *, limit: int, cursor: str | None) -> FilePage:
        case_id = _require_id(case_id, "case_id")
        if limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {limit}")
        offset, last_id = (0, None) if cursor is None else decode_cursor(cursor, case_id, (int, str))
        case = await self._get_record("Case", case_id, "case")
        entries = _field_entries(case)
        for extra in await self._stream_files(case_id):
            if extra.file_id not in {entry.file_id for entry in entries}:
                entries.append(extra)
        if last_id is not None and not (0 < offset <= len(entries) and entries[offset - 1].file_id == last_id):
            ids = [entry.file_id for entry in entries]
            offset = ids.index(last_id) + 1 if last_id in ids else min(offset, len(entries))
        page = entries[offset : offset + limit]
        page = await self._with_sizes(page)
        end = offset + len(page)
        next_cursor = encode_cursor(case_id, end, page[-1].file_id) if end < len(entries) and page else None
        return FilePage(files=page, next_cursor=next_cursor)

    async def _with_sizes(self, entries: list[FileEntry]) -> list[FileEntry]:
        """Fill size and creation time where the listing lacked them: from memory, else from
        `GET Attachment/{id}` (at most `_LOOKUPS_PER_LISTING` at once for this listing)."""
        result = list(entries)
        limiter = anyio.CapacityLimiter(_LOOKUPS_PER_LISTING)

        async def fetch(attachment_id: str) -> _AttachmentMeta | None:
            async with limiter:
                try:
                    data = await self._call("GET", f"Attachment/{attachment_id}", f"read attachment {attachment_id}")
                except (NotFoundError, PermissionDeniedError):
                    return None
            return _attachment_meta(data)

        async def fill(index: int) -> None:
            entry = result[index]
            try:
                meta = await self._attachment_meta.get(entry.file_id, lambda: fetch(entry.file_id))
            except CrmError as exc:  # the first failure fails the listing, as itself (not in a group)
                failures.append(exc)
                group.cancel_scope.cancel()
                return
            if meta is not None:
                result[index] = _sized(entry, meta)

        missing: list[int] = []
        for index, entry in enumerate(result):
            if entry.size is not None:
                continue
            meta = self._attachment_meta.remembered(entry.file_id)
            if meta is None:
                missing.append(index)
            else:
                result[index] = _sized(entry, meta)  # a warm listing starts no task at all
        if not missing:
            return result
        failures: list[CrmError] = []
        async with anyio.create_task_group() as group:
            for index in missing:
                group.start_soon(fill, index)
        if failures:
            raise failures[0]
        return result

    async def _stream_files(self, case_id: str) -> list[FileEntry]:
        """Files of the case's stream notes (EspoCRM 9.1+); empty where the server lacks the route."""
        if self._stream_attachments is False and _monotonic() < self._stream_recheck_at:
            return []
        found: list[FileEntry] = []
        offset = 0
        while True:
            request = self._http.build_request(
                "GET", f"Case/{case_id}/streamAttachments", params={"maxSize": MAX_SIZE, "offset": offset}
            )
            response = await self._send(request, f"list the stream files of case {case_id}")
            if response.status_code in _NO_ROUTE_STATUSES and offset == 0:
                # Before 9.1 (the case itself was just read, so the failure is the unknown route).
                self._stream_attachments = False
                self._stream_recheck_at = _monotonic() + _STREAM_RECHECK_SECONDS
                logger.info(
                    "EspoCRM %s answered streamAttachments with HTTP %d: no stream-note files (before 9.1)",
                    self.name,
                    response.status_code,
                )
                return []
            if response.status_code == 403:
                return []  # no stream access for this user: the field's files are still listed
            await self._check(response, f"list the stream files of case {case_id}", None)
            self._stream_attachments = True
            data = response.json()
            rows = data.get("list", []) if isinstance(data, dict) else data if isinstance(data, list) else []
            for row in rows:
                if isinstance(row, dict) and isinstance(row.get("id"), str) and _ID.match(row["id"]):
                    size = row.get("size")
                    found.append(
                        FileEntry(
                            file_id=row["id"],
                            name=row.get("name") or row["id"],
                            mime_type=row.get("type") or "application/octet-stream",
                            size=size if isinstance(size, int) else None,
                            created_at=_parse_time(row.get("createdAt")),
                        )
                    )
            offset += len(rows)
            if len(rows) < MAX_SIZE or offset >= 50 * MAX_SIZE:
                return found

    @asynccontextmanager
    async def open_file(self, file_id: str) -> AsyncIterator[Download]:
        file_id = _require_id(file_id, "file_id")
        meta = await self._call(
            "GET", f"Attachment/{file_id}", f"read file {file_id}", missing=self._missing("file", file_id)
        )
        async with self._download(file_id, meta or {}, self._missing("file", file_id)) as download:
            yield download

    @asynccontextmanager
    async def _download(self, attachment_id: str, meta: dict[str, Any], missing: str) -> AsyncIterator[Download]:
        what = f"download file {attachment_id}"
        request = self._http.build_request("GET", f"Attachment/file/{attachment_id}")
        response = await self._send(request, what, stream=True)
        try:
            await self._check(response, what, missing)
            length = response.headers.get("Content-Length")
            size = int(length) if length and length.isdigit() else meta.get("size")
            mime = _essence(meta.get("type")) or _essence(response.headers.get("Content-Type"))
            if size is not None and size > self.context.max_transfer_bytes:
                raise TooLargeError(
                    f"file {attachment_id} is {size:,} bytes, over this server's transfer limit of "
                    f"{self.context.max_transfer_bytes:,} bytes (limits.max_transfer_bytes)"
                )
            name = meta.get("name") or attachment_id
            yield Download(
                name=name,
                mime_type=mime or "application/octet-stream",
                size=size if isinstance(size, int) else None,
                chunks=self._body(response, what, name, int(length) if length and length.isdigit() else None),
            )
        finally:
            await response.aclose()

    def _body(self, response: httpx.Response, what: str, name: str, expected: int | None) -> AsyncIterator[bytes]:
        """The response's bytes, checked against the limit and its Content-Length (`checked_download`);
        a connection that breaks or ends early is an error, never a short file."""

        def broken(exc: BaseException, received: int) -> BackendError:
            return BackendError(
                f"EspoCRM backend '{self.name}' broke off while trying to {what} after {received:,} bytes "
                f"({type(exc).__name__}); try again"
            )

        return checked_download(
            response.aiter_bytes(),
            name=name,
            size=expected,
            limit=self.context.max_transfer_bytes,
            source=f"EspoCRM backend '{self.name}'",
            size_from="its Content-Length announced",
            broken_on=(httpx.HTTPError,),
            broken=broken,
        )

    # --------------------------------------------------------------------------------- photos

    def _photo_field(self) -> str:
        field = self.settings.contact_photo_field
        if field is None:
            raise UnsupportedError(
                f"EspoCRM backend '{self.name}' has no contact photo field configured (core EspoCRM contacts have "
                f"no photo). {_PHOTO_FIELD_HELP}"
            )
        return field

    def _photo_id(self, contact: dict[str, Any], field: str) -> str | None:
        attribute = f"{field}Id"
        if attribute not in contact:
            raise UnsupportedError(
                f"EspoCRM backend '{self.name}': contacts have no field '{field}' (configured as "
                f"contact_photo_field), so there is no photo to read or set. {_PHOTO_FIELD_HELP}"
            )
        value = contact[attribute]
        return value if isinstance(value, str) and value else None

    async def _locate_photo(self, contact_id: str) -> tuple[str, dict[str, Any]] | None:
        field = self._photo_field()
        contact = await self._get_record("Contact", contact_id, "contact")
        photo_id = self._photo_id(contact, field)
        if photo_id is None or not _ID.match(photo_id):
            return None
        try:
            meta = await self._call("GET", f"Attachment/{photo_id}", f"read the photo of contact {contact_id}")
        except NotFoundError:
            return None  # the field points at an attachment that is gone
        return photo_id, meta if isinstance(meta, dict) else {}

    async def get_contact_photo(self, contact_id: str) -> Photo | None:
        contact_id = _require_id(contact_id, "contact_id")
        found = await self._locate_photo(contact_id)
        if found is None:
            return None
        photo_id, meta = found
        size = meta.get("size")
        return Photo(
            photo_id=photo_id,
            mime_type=_essence(meta.get("type")) or "application/octet-stream",
            size=size if isinstance(size, int) else None,
        )

    @asynccontextmanager
    async def open_contact_photo(self, contact_id: str) -> AsyncIterator[Download]:
        contact_id = _require_id(contact_id, "contact_id")
        found = await self._locate_photo(contact_id)
        if found is None:
            raise NotFoundError(
                f"contact {contact_id} has no photo on backend '{self.name}' (get_contact_photo shows whether "
                "a contact has one; bind_photo sets it)"
            )
        photo_id, meta = found
        missing = f"the photo of contact {contact_id} was not found on backend '{self.name}' (it may have just changed)"
        async with self._download(photo_id, meta, missing) as download:
            yield download

    async def bind_photo(self, contact_id: str, upload: Upload) -> Photo:
        field = self._photo_field()
        contact_id = _require_id(contact_id, "contact_id")
        self._check_size(upload)
        contact = await self._get_record("Contact", contact_id, "contact")
        previous = self._photo_id(contact, field)  # the field must exist, or the link below would be ignored
        head, chunks = await _peek(upload.chunks, 512)
        detected = sniff(head)
        if detected not in _IMAGE_EXTENSIONS:
            await _close_stream(chunks)
            raise InvalidInputError(
                f"EspoCRM accepts JPEG, PNG, GIF, WebP, SVG or AVIF images as photos, but the bytes of "
                f"{upload.name!r} are {detected or 'of an unknown type'}; nothing was changed"
            )
        name = _with_extension(upload.name, detected)
        if name != upload.name or detected != _essence(upload.mime_type):
            logger.info(
                "EspoCRM %s: photo %r sent as %r (%s) to match its bytes", self.name, upload.name, name, detected
            )
        fixed = Upload(name=name, mime_type=detected, size=upload.size, chunks=chunks)
        attachment = await self._post_attachment(fixed, {"relatedType": "Contact", "field": field})
        attachment_id = attachment["id"]
        try:
            await self._call(
                "PUT",
                f"Contact/{contact_id}",
                f"set the photo of contact {contact_id}",
                missing=self._missing("contact", contact_id),
                json_body={f"{field}Id": attachment_id},
            )
        except BaseException as exc:
            # EspoCRM deletes the previous photo when the field changes: deleting the new one while it
            # may be bound would leave the contact with no photo at all, so an unsure outcome keeps it.
            if not await self._settle(exc, attachment_id, lambda: self._photo_is(contact_id, field, attachment_id)):
                raise
        finally:
            if previous is not None:
                self._attachment_meta.forget(previous)  # EspoCRM deletes the replaced photo
        logger.info("EspoCRM %s: contact %s now has photo %s", self.name, contact_id, attachment_id)
        return Photo(photo_id=attachment_id, mime_type=detected, size=upload.size)

    # -------------------------------------------------------------------------------- uploads

    async def upload_attachment(self, record_type: RecordType, record_id: str, upload: Upload) -> FileEntry:
        entities = {"case": "Case", "contact": "Contact", "account": "Account"}
        if record_type not in entities:
            raise UnsupportedError(
                f"the EspoCRM backend attaches files to cases, contacts and accounts, not {record_type!r}"
            )
        record_id = _require_id(record_id, "record_id")
        self._check_size(upload)
        entity = entities[record_type]
        await self._get_record(entity, record_id, record_type)  # fail before sending any bytes
        parent = "Case" if record_type == "case" else "Note"
        attachment = await self._post_attachment(upload, {"parentType": parent, "field": "attachments"})
        attachment_id = attachment["id"]
        try:
            if record_type == "case":
                await self._link_to_case(record_id, attachment_id)
            else:
                await self._post_note(entity, record_id, record_type, attachment_id)
        except BaseException as exc:
            linked = self._case_has if record_type == "case" else self._note_has
            if not await self._settle(exc, attachment_id, lambda: linked(record_id, attachment_id), keep=False):
                raise
        logger.info(
            "EspoCRM %s: attached %s (%d bytes) to %s %s as %s",
            self.name,
            upload.name,
            upload.size,
            record_type,
            record_id,
            attachment["id"],
        )
        stored = attachment.get("name")
        return FileEntry(
            file_id=attachment["id"],
            name=stored if isinstance(stored, str) and stored else upload.name,
            mime_type=upload.mime_type,
            size=upload.size,
            created_at=_parse_time(attachment.get("createdAt")),
        )

    async def _post_attachment(self, upload: Upload, target: dict[str, str]) -> dict[str, Any]:
        """Step 1: `POST Attachment`; returns the new attachment's attributes (with a checked id)."""
        upload = Upload(_fit_name(upload.name), _declared_type(upload.mime_type), upload.size, upload.chunks)
        if upload.size > self.settings.chunk_threshold_bytes:
            return await self._post_chunked(upload, target)
        meta = {"name": upload.name, "type": upload.mime_type, "role": "Attachment", **target}
        dumped = json.dumps({**meta, "file": f"data:{upload.mime_type};base64,"}, separators=(",", ":"))
        head, tail = dumped[:-2].encode(), b'"}'
        length = len(head) + base64_length(upload.size) + len(tail)
        try:
            data = await self._call(
                "POST",
                "Attachment",
                f"upload {upload.name!r}",
                content=_data_url_body(head, upload, tail, self.context.max_transfer_bytes),
                headers={"Content-Type": "application/json", "Content-Length": str(length)},
            )
        finally:
            await _close_stream(upload.chunks)
        return self._created(data, upload)

    def _created(self, data: Any, upload: Upload) -> dict[str, Any]:
        if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not _ID.match(data["id"]):
            raise BackendError(
                f"EspoCRM backend '{self.name}' accepted {upload.name!r} but answered without an attachment id"
            )
        return data

    async def _post_chunked(self, upload: Upload, target: dict[str, str]) -> dict[str, Any]:
        """EspoCRM's chunked upload: an empty being-uploaded attachment, then its chunks in order.
        Only one chunk (`chunk_size_bytes`) is held in memory at a time."""
        meta = {
            "name": upload.name,
            "type": upload.mime_type,
            "role": "Attachment",
            **target,
            "isBeingUploaded": True,
            "size": upload.size,
        }
        try:
            data = await self._call(
                "POST", "Attachment", f"start the chunked upload of {upload.name!r}", json_body=meta
            )
            attachment = self._created(data, upload)
        except BaseException:
            await _close_stream(upload.chunks)
            raise
        attachment_id = attachment["id"]
        prefix = f"data:{upload.mime_type};base64,".encode()
        piece = bytearray()
        number = 0

        async def flush(data: bytes) -> None:
            nonlocal number
            number += 1
            body = _ChunkBody(prefix, data)
            try:
                await self._call(
                    "POST",
                    f"Attachment/chunk/{attachment_id}",
                    f"upload chunk {number} of {upload.name!r}",
                    content=body,
                    headers={"Content-Type": "text/plain", "Content-Length": str(len(body))},
                )
            finally:
                body.release()

        try:
            chunks = checked_upload(upload, self.context.max_transfer_bytes, outcome=_NOTHING_STORED)
            async with aclosing(chunks):
                async for chunk in chunks:
                    piece += chunk
                    size = self.settings.chunk_size_bytes
                    while len(piece) >= size:
                        await flush(bytes(piece[:size]))
                        del piece[:size]
            if piece or number == 0:
                await flush(bytes(piece))
        except BaseException:
            await _close_stream(upload.chunks)
            await self._delete_quietly(attachment_id)
            raise
        return attachment

    async def _link_to_case(self, case_id: str, attachment_id: str) -> None:
        """Step 2 for a case: `attachmentsIds` replaces the list, so send the current ids plus the new
        one; re-read to catch a concurrent writer that dropped it, and link once more if so."""
        async with self._lock(f"Case/{case_id}"):
            for attempt in range(2):
                case = await self._get_record("Case", case_id, "case")
                current = [item for item in case.get("attachmentsIds") or [] if isinstance(item, str)]
                if attachment_id in current:
                    return
                version = case.get("versionNumber")
                # Optimistic concurrency (EspoCRM reads the header; a versionNumber in the body is dropped).
                headers = {"X-Version-Number": str(version)} if type(version) is int else None
                try:
                    await self._call(
                        "PUT",
                        f"Case/{case_id}",
                        f"link the file to case {case_id}",
                        missing=self._missing("case", case_id),
                        json_body={"attachmentsIds": [*current, attachment_id]},
                        headers=headers,
                    )
                except ConflictError:
                    if attempt == 0:
                        continue
                    raise
                after = await self._get_record("Case", case_id, "case")
                if attachment_id in (after.get("attachmentsIds") or []):
                    return
                logger.warning(
                    "EspoCRM %s: case %s changed while linking %s; retrying", self.name, case_id, attachment_id
                )
        raise ConflictError(
            f"case {case_id} on backend '{self.name}' kept changing while the file was being linked (someone else "
            "edited its attachments at the same time); the upload was removed again — try again"
        )

    async def _post_note(self, entity: str, record_id: str, kind: str, attachment_id: str) -> None:
        """Step 2 for contacts and accounts: a stream post carrying the file."""
        await self._call(
            "POST",
            "Note",
            f"post the file to the stream of {kind} {record_id}",
            missing=self._missing(kind, record_id),
            json_body={"type": "Post", "parentType": entity, "parentId": record_id, "attachmentsIds": [attachment_id]},
        )

    async def _settle(
        self, exc: BaseException, attachment_id: str, linked: Callable[[], Awaitable[bool]], *, keep: bool = True
    ) -> bool:
        """After the link step failed, decide what becomes of the uploaded attachment. A refusal by the
        CRM: it is deleted. A lost answer or a cancelled call: the record is read again. Linked after
        all: the write took effect, so it stays (and for a lost answer the upload succeeded: True, never
        an error that invites a duplicate). Not linked: deleted. Unknown: deleted, unless `keep`."""
        state: bool | None = False
        if not isinstance(exc, CrmError) or isinstance(exc, _NoAnswer):
            with anyio.CancelScope(shield=True):
                try:
                    state = await linked()
                except Exception:
                    state = None
        if state:
            logger.info("EspoCRM %s: the link of %s took effect although its answer was lost", self.name, attachment_id)
            return isinstance(exc, _NoAnswer)
        if state is None and keep:
            logger.warning(
                "EspoCRM %s: could not tell whether %s was linked; kept it rather than risk a dangling link",
                self.name,
                attachment_id,
            )
            return False
        await self._delete_quietly(attachment_id)
        return False

    async def _case_has(self, case_id: str, attachment_id: str) -> bool:
        case = await self._get_record("Case", case_id, "case")
        return attachment_id in (case.get("attachmentsIds") or [])

    async def _note_has(self, record_id: str, attachment_id: str) -> bool:
        """Whether the attachment now belongs to a stream note (`record_id` is the note's parent)."""
        meta = await self._call("GET", f"Attachment/{attachment_id}", f"read attachment {attachment_id}")
        return isinstance(meta, dict) and meta.get("parentType") == "Note" and bool(meta.get("parentId"))

    async def _photo_is(self, contact_id: str, field: str, attachment_id: str) -> bool:
        contact = await self._get_record("Contact", contact_id, "contact")
        return contact.get(f"{field}Id") == attachment_id

    async def _delete_quietly(self, attachment_id: str) -> None:
        """Remove an attachment that could not be linked; shielded, and a failure is only logged."""
        self._attachment_meta.forget(attachment_id)
        with anyio.CancelScope(shield=True):
            try:
                await self._call("DELETE", f"Attachment/{attachment_id}", f"delete attachment {attachment_id}")
            except Exception:
                logger.warning(
                    "EspoCRM %s: could not delete the unlinked attachment %s", self.name, attachment_id, exc_info=True
                )

    # ----------------------------------------------------------------------------------- find

    async def find_records(self, record_type: FindType, query: str, *, limit: int) -> list[Record]:
        text = " ".join(query.split())
        if not text:
            raise InvalidInputError("query is empty: give a name, a case number (e.g. '42') or words of a subject")
        pattern = _like_literal(text)
        if limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {limit}")
        size = min(limit, MAX_SIZE)
        if record_type == "contact":
            params = [
                ("maxSize", str(size)),
                ("offset", "0"),
                ("select", "id,name,firstName,lastName"),
                ("orderBy", "name"),
                ("order", "asc"),
                *_where([{"type": "contains", "attribute": "name", "value": pattern}]),
            ]
            data = await self._call("GET", "Contact", f"find contacts matching {text!r}", params=params)
            return [Record(id=row["id"], title=_person(row), record_type="contact") for row in _rows(data)][:limit]
        if record_type == "case":
            number = text.removeprefix("#").strip()
            filters: list[dict[str, Any]] = [{"type": "contains", "attribute": "name", "value": pattern}]
            if number.isdigit():
                filters.append({"type": "equals", "attribute": "number", "value": number})
            params = [
                ("maxSize", str(size)),
                ("offset", "0"),
                ("select", "id,name,number"),
                ("orderBy", "number"),
                ("order", "desc"),
                *_where([{"type": "or", "value": filters}]),
            ]
            data = await self._call("GET", "Case", f"find cases matching {text!r}", params=params)
            rows = _rows(data)
            rows.sort(key=lambda row: str(row.get("number")) != number)  # an exact number first
            return [
                Record(
                    id=row["id"], title=f"#{row.get('number')} · {row.get('name') or ''}".strip(), record_type="case"
                )
                for row in rows
            ][:limit]
        raise UnsupportedError(f"the EspoCRM backend finds cases and contacts, not {record_type!r}")


# ---------------------------------------------------------------------------------- free functions


def _fit_name(name: str) -> str:
    """`name` within Attachment's varchar(255) (longer is a validation failure), extension kept:
    `very-long…name.pdf`. The server's answer carries the stored name back to the caller."""
    if len(name) <= _MAX_NAME:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or len(extension) > 16:
        return name[: _MAX_NAME - 1] + "…"
    return stem[: _MAX_NAME - len(extension) - 2] + "…." + extension


def _declared_type(mime: str) -> str:
    """`mime` within Attachment's `type` varchar(100): parameters dropped first if it is too long."""
    if len(mime) <= _MAX_TYPE:
        return mime
    essence = _essence(mime)
    return essence if 0 < len(essence) <= _MAX_TYPE else "application/octet-stream"


def _like_literal(text: str) -> str:
    """`text` for EspoCRM's `contains`/`startsWith`, which become SQL LIKE with the value unescaped:
    a backslash before `%`, `_` and itself makes them match literally (MySQL's and PostgreSQL's
    default LIKE escape), so a query of "%" finds names containing "%", not every record."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _rows(data: Any) -> list[dict[str, Any]]:
    rows = data.get("list") if isinstance(data, dict) else None
    return [row for row in rows or [] if isinstance(row, dict) and isinstance(row.get("id"), str)]


def _person(row: dict[str, Any]) -> str:
    name = row.get("name")
    if isinstance(name, str) and name.strip():
        return name.strip()
    return " ".join(part for part in (row.get("firstName"), row.get("lastName")) if part) or row["id"]


def _field_entries(case: dict[str, Any]) -> list[FileEntry]:
    ids = case.get("attachmentsIds") or []
    names = case.get("attachmentsNames") or {}
    types = case.get("attachmentsTypes") or {}
    entries = []
    for attachment_id in ids:
        if not isinstance(attachment_id, str) or not _ID.match(attachment_id):
            continue
        entries.append(
            FileEntry(
                file_id=attachment_id,
                name=names.get(attachment_id) or attachment_id,
                mime_type=_essence(types.get(attachment_id)) or "application/octet-stream",
            )
        )
    return entries


def _body_detail(response: httpx.Response) -> str:
    """What a JSON error body says (EspoCRM's validation failures, `message`), in one line."""
    # The body is JSON even where the error response kept another Content-Type.
    if not response.content.lstrip().startswith(b"{"):
        return ""
    try:
        data = response.json()
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    translation = data.get("messageTranslation")
    if isinstance(translation, dict):
        label = translation.get("label") or "error"
        extra = translation.get("data") or {}
        if isinstance(extra, dict) and extra:
            fields = ", ".join(f"{key}={value}" for key, value in extra.items())
            return f"{label} ({fields})"[:300]
        return str(label)[:300]
    message = data.get("message")
    return str(message)[:300] if message else ""


class _ChunkBody(httpx.ByteStream):
    """One chunk's body for `POST Attachment/chunk/{id}`: the data-URL prefix, then the chunk's base64,
    encoded piece by piece as it is sent.

    Why not plain `bytes`: httpx keeps a finished request (and so its body) alive in reference cycles
    (the response and its bound stream) that only the cyclic collector frees, and it runs rarely here:
    a 200 MiB upload had eight 5.3 MiB bodies alive at once. This body holds only the raw chunk, and
    `release` drops it once the answer is in. It stays a `ByteStream` so the retry transport still sends
    it again after a 429 or a refused connection (the chunk can be encoded again until released)."""

    def __init__(self, prefix: bytes, data: bytes) -> None:
        super().__init__(b"")
        self._prefix = prefix
        self._data = data
        self._length = len(prefix) + base64_length(len(data))
        self._released = False

    def __len__(self) -> int:
        return self._length

    def _pieces(self) -> Iterator[bytes]:
        if self._released:
            raise RuntimeError("this chunk body was released after its request finished; it cannot be sent again")
        yield self._prefix
        data = self._data
        for start in range(0, len(data), BASE64_PIECE):
            yield base64.b64encode(data[start : start + BASE64_PIECE])

    def __iter__(self) -> Iterator[bytes]:
        return self._pieces()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._pieces():
            yield piece

    def release(self) -> None:
        """Drop the chunk: the request may outlive this call, its bytes need not."""
        self._data = b""
        self._released = True


async def _data_url_body(head: bytes, upload: Upload, tail: bytes, limit: int) -> AsyncIterator[bytes]:
    """The JSON body of `POST Attachment`, base64-encoding the file on the fly: whole 3-byte groups
    per chunk, the remainder carried over, so the text is exactly the file's base64. The chunks are
    `checked_upload`'s: a source that passes its announced size (or the limit) or ends short fails
    the request before its body is complete, so EspoCRM stores nothing."""
    yield head
    async for piece in base64_encoded(checked_upload(upload, limit, outcome=_NOTHING_STORED)):
        yield piece
    yield tail
