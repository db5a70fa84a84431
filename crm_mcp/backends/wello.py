"""Wello Solutions (formerly Odyssee Mobile): REST/OData, every file is a `db_file` record.

How the vendor-neutral contract maps onto Wello:

- **Authentication**: HTTP Basic on every request, with the user written as `username:password@domain`.
  An optional `api_version` is sent as `X-Api-Version`.
- **Cases** are jobs (`db_table_name = 'jobs'`, entity set `api/Jobs`) or, with `case_table = "task"`,
  Service Desk tasks (`'task'`, `api/Task`). Contacts are `contact` (`api/Contact`); accounts are companies
  (`company`, `api/Company`).
- **Files** are `db_file` records linked by `db_table_name` + `id_in_table`. They are listed through
  `api/DbFile?$filter=...&$select=...` with a `$select` that leaves `file_content` out, so a listing never
  transfers file bytes; archived files (`is_archived = true`: "deleted, content flushed") are not listed.
  Pages are fetched with `$top` (at most Wello's page of 20) and `$skip` behind the tool's cursor;
  `@odata.nextLink` (or `@odata.nextlink`, as the Paging guide also spells it) says more rows follow.
- **Bytes**: Wello has no stream endpoint; `GET api/DbFile(id)` returns the record with `file_content` as a
  base64 string. The JSON is scanned incrementally and the base64 decoded as it arrives, so a large file is
  never held in memory (not even once).
- **Uploads**: `POST api/DbFile` with a JSON body that is *streamed*: the fields, then `file_content`
  base64-encoded chunk by chunk from the upload, with an exact `Content-Length` computed beforehand. The record
  id is a GUID chosen here, so after a failure that may have reached the server we can look the record up and
  remove it (DELETE, or `is_archived = true` where DELETE is refused): a failed upload leaves nothing listed.
  `Prefer: return=minimal` keeps the answer to the id; a server that echoes the whole record anyway is read
  no further than 64 KiB, so the file is not held in memory a second time.
- **Contact photos**: a Wello contact has no photo field. The photo is the newest (by `date_add`) non-archived
  `db_file` linked to the contact whose MIME type is `image/*`. `bind_photo` adds a new image file to the
  contact; earlier photos stay as ordinary contact files (archiving them would flush their content, and
  crm-mcp does not destroy customer data to change an avatar).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import anyio
import httpx
from pydantic import SecretStr, field_validator

from crm_mcp.backends._streams import (
    Base64Decoder,
    Base64Error,
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
    require_guid,
)
from crm_mcp.errors import (
    AuthenticationError,
    BackendError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    TooLargeError,
    UnsupportedError,
)
from crm_mcp.http import new_client

__all__ = ["WelloBackend", "WelloSettings", "shorten_name"]

logger = logging.getLogger(__name__)

MAX_NAME = 100
"""Wello's limit for `db_file.name`, `file_name` and `mime_type` (in .NET characters: UTF-16 code units)."""
PAGE_SIZE = 20
"""Wello's default (and largest) page; bigger `$top` values are paged with `@odata.nextLink`."""
ENCODE_CHUNK = 192 * 1024
"""Raw bytes base64-encoded per body piece (a multiple of 3, so pieces concatenate into one base64 text)."""

_FILE_FIELDS = (
    "id",
    "db_table_name",
    "id_in_table",
    "name",
    "file_name",
    "mime_type",
    "file_size",
    "is_archived",
    "date_add",
)
"""The `$select` of every listing: everything we use, and never `file_content`."""
MAX_ANSWER = 64 * 1024
"""The most of a successful POST answer we read (it only confirms the id we chose)."""
CLEANUP_SECONDS = 15
"""How long a cancelled upload may spend making sure it left nothing behind."""
MAX_SCAN_PAGES = 500
"""A safety stop for scans through a contact's files (500 pages of 20)."""


class _Table:
    """A Wello table a file can be linked to: its `db_table_name`, its OData entity set, what we call it."""

    def __init__(self, db_table_name: str, entity_set: str, label: str) -> None:
        self.db_table_name = db_table_name
        self.entity_set = entity_set
        self.label = label


_JOBS = _Table("jobs", "Jobs", "job")
_TASK = _Table("task", "Task", "task")
_CONTACT = _Table("contact", "Contact", "contact")
_COMPANY = _Table("company", "Company", "company")


class WelloSettings(RemoteSettings):
    """`[backends.<name>]` with `vendor = "wello"`."""

    vendor: Literal["wello"]
    url: str
    """The Wello API root, e.g. `https://developers.wello.solutions` (a trailing `/api` is accepted)."""
    username: str
    password: SecretStr
    domain: str
    """The Wello domain the API user belongs to; sent as `username:password@domain`."""
    api_version: str | None = None
    """Sent as `X-Api-Version` when set."""
    case_table: Literal["jobs", "task"] = "jobs"
    """What a "case" is: a job (work order) or a Service Desk task."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as 'https://developers.wello.solutions'")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must be a plain URL without credentials, query or fragment")
        return value

    @field_validator("username", "domain")
    @classmethod
    def _check_text(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        if ":" in value:
            raise ValueError("must not contain ':' (Basic auth separates user and password with it)")
        return value

    @field_validator("domain")
    @classmethod
    def _check_domain(cls, value: str) -> str:
        if "@" in value:
            raise ValueError("must be the bare Wello domain without '@' (crm-mcp adds it: username:password@domain)")
        return value


# ------------------------------------------------------------------------------------ small helpers


def _api_root(url: str) -> str:
    """`https://host[/prefix]` → `https://host[/prefix]/api/` (whether or not the user wrote `/api`)."""
    base = url.rstrip("/")
    if base.lower().endswith("/api"):
        base = base[: -len("/api")]
    return base + "/api/"


def _utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _cut_utf16(text: str, units: int) -> str:
    """The longest prefix of `text` that is at most `units` UTF-16 code units long."""
    out = []
    used = 0
    for char in text:
        width = 2 if ord(char) > 0xFFFF else 1
        if used + width > units:
            break
        out.append(char)
        used += width
    return "".join(out)


def shorten_name(name: str, limit: int = MAX_NAME) -> str:
    """Fit `name` into Wello's `limit` (UTF-16 units), keeping its extension: `very-long…name.pdf`."""
    if _utf16_length(name) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or _utf16_length(ext) + 2 > limit // 4:
        return _cut_utf16(name, limit - 1).rstrip() + "…"
    suffix = "…." + ext
    return _cut_utf16(stem, limit - _utf16_length(suffix)).rstrip() + suffix


def _quote(text: str) -> str:
    """An OData string literal: single quotes doubled, so user text can never close the literal."""
    return "'" + text.replace("'", "''") + "'"


def _parse_date(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _display_name(row: Mapping[str, Any]) -> str:
    return str(row.get("file_name") or row.get("name") or row.get("id") or "file")


def _mime(row: Mapping[str, Any]) -> str:
    value = row.get("mime_type")
    return value.strip().lower() if isinstance(value, str) and value.strip() else "application/octet-stream"


def _size(row: Mapping[str, Any]) -> int | None:
    """`file_size`, or None when unknown. Wello stores no nulls (an unset number is 0), so 0 is "unknown"
    too: a file that is really empty is then listed without a size, never a file with bytes as empty."""
    value = row.get("file_size")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _is_live(row: Mapping[str, Any]) -> bool:
    return row.get("is_archived") is not True


def _entry(row: Mapping[str, Any]) -> FileEntry:
    return FileEntry(
        file_id=str(row["id"]).lower(),
        name=_display_name(row),
        mime_type=_mime(row),
        size=_size(row),
        created_at=_parse_date(row.get("date_add")),
        kind="file",
    )


def _vendor_message(response: httpx.Response) -> str:
    """The useful part of a Wello error body (ASP.NET `Message`/`ModelState`, OData `error.message`, text)."""
    text = response.text.strip()
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    parts: list[str] = []
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            parts.append(error["message"])
        elif isinstance(error, str):
            parts.append(error)
        for key in ("Message", "message", "ExceptionMessage", "error_description"):
            if isinstance(body.get(key), str) and body[key] not in parts:
                parts.append(body[key])
        state = body.get("ModelState") or body.get("modelState")
        if isinstance(state, dict):
            for field, problems in state.items():
                for problem in problems if isinstance(problems, list) else [problems]:
                    parts.append(f"{field}: {problem}")
    elif isinstance(body, str):
        parts.append(body)
    elif text and not text.startswith("<"):
        parts.append(text)
    return " ".join(" ".join(parts).split())


def _clip(message: str, limit: int = 500) -> str:
    return message[:limit] + ("…" if len(message) > limit else "")


def _has_next_link(body: Mapping[str, Any]) -> bool:
    """Whether an OData page says more rows follow. Wello's Paging guide spells the key both
    `@odata.nextLink` (its example) and `@odata.nextlink` (its text), so either is accepted."""
    return any(key.lower() == "@odata.nextlink" and value for key, value in body.items())


async def _close_stream(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        with suppress(Exception):
            await aclose()


# --------------------------------------------------------------------------- streaming base64 in JSON


_ESCAPE = re.compile(rb"\\(?:u([0-9A-Fa-f]{4})|(.))", re.DOTALL)
_BASE64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def _unescape(match: re.Match[bytes]) -> bytes:
    r"""One JSON escape inside base64 text: `\/` and `\u00XX` of a base64 character are that character;
    escaped line breaks (MIME-style base64) are dropped; anything else cannot be base64."""
    if match[1] is not None:
        code = int(match[1], 16)
        if code in _BASE64_CHARS:
            return bytes([code])
        if code in (0x0A, 0x0D):
            return b""
    elif match[2] == b"/":
        return b"/"
    elif match[2] in (b"n", b"r"):
        return b""
    raise BackendError("Wello sent a file_content with an unexpected escape sequence")


class ContentScanner:
    """Finds the top-level `"file_content"` string of a JSON object fed in pieces and decodes its base64
    as it arrives. Everything else in the object is skipped without being kept."""

    _QUOTE, _BACKSLASH, _COLON, _COMMA = 0x22, 0x5C, 0x3A, 0x2C
    _KEY = b"file_content"

    def __init__(self) -> None:
        self._state = "outer"  # outer → value → content → done
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._expect_key = False
        self._key: bytearray | None = None
        self._last_key: bytes | None = None
        self._carry = b""
        self._b64 = Base64Decoder()
        self.found = False
        """True once a `file_content` key was seen (its value may have been null)."""
        self.decoded = 0

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes) -> bytes:
        """Consume the next piece of the body; return the file bytes it completed."""
        if self._state == "outer":
            data = self._outer(data)
        if self._state == "value":
            data = self._value(data)
        if self._state == "content":
            return self._content(data)
        return b""

    def _outer(self, data: bytes) -> bytes:
        for index, char in enumerate(data):
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif char == self._BACKSLASH:
                    self._escape = True
                    continue
                elif char == self._QUOTE:
                    self._in_string = False
                    if self._key is not None:
                        self._last_key, self._key = bytes(self._key), None
                    continue
                if self._key is not None and len(self._key) <= len(self._KEY):
                    self._key.append(char)
                continue
            if char == self._QUOTE:
                self._in_string = True
                if self._depth == 1 and self._expect_key:
                    self._key, self._expect_key = bytearray(), False
            elif char in b"{[":
                self._depth += 1
                self._expect_key = char == 0x7B and self._depth == 1
            elif char in b"}]":
                self._depth -= 1
            elif char == self._COMMA and self._depth == 1:
                self._expect_key, self._last_key = True, None
            elif char == self._COLON and self._depth == 1 and self._last_key == self._KEY:
                self._state, self.found = "value", True
                return data[index + 1 :]
        return b""

    def _value(self, data: bytes) -> bytes:
        stripped = data.lstrip(b" \t\r\n")
        if not stripped:
            return b""
        if stripped[:1] == b'"':
            self._state = "content"
            return stripped[1:]
        if stripped[:1] == b"n":  # null: the record has no content
            self._state = "done"
            return b""
        raise BackendError("Wello sent a file_content that is not a base64 string")

    def _content(self, data: bytes) -> bytes:
        if self._carry:
            data, self._carry = self._carry + data, b""
        end = data.find(b'"')
        text = memoryview(data) if end < 0 else memoryview(data)[:end]
        if end < 0:
            # An escape cut by the piece boundary waits for the rest (`\/` is 2 bytes, `\u002F` is 6).
            start = data.rfind(b"\\", max(0, len(data) - 5))
            if start >= 0 and len(data) - start < (6 if data[start + 1 : start + 2] == b"u" else 2):
                self._carry, text = data[start:], text[:start]
        if data.find(b"\\", 0, len(text)) >= 0:
            text = _ESCAPE.sub(_unescape, text)
        try:
            out = self._b64.feed(text)
            if end >= 0:
                self._state = "done"
                out += self._b64.finish(pad=True)
        except Base64Error as exc:
            raise BackendError(f"Wello sent a file_content that is {exc}") from None
        self.decoded = self._b64.decoded
        return out


# ------------------------------------------------------------------------------------------ backend


class WelloBackend:
    """Wello over its REST/OData API: jobs (or tasks), contacts and companies with linked `db_file`s."""

    vendor: ClassVar[str] = "wello"
    settings_model: ClassVar[type[BackendSettings]] = WelloSettings

    def __init__(self, name: str, settings: WelloSettings, context: BackendContext) -> None:
        self.name = name
        self.settings = settings
        self.context = context
        self._case = _TASK if settings.case_table == "task" else _JOBS
        self._tables: dict[str, _Table] = {"case": self._case, "contact": _CONTACT, "account": _COMPANY}
        self._client: httpx.AsyncClient | None = None

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            upload_record_types=["case", "contact", "account"],
            contact_photos=True,
            bind_photo=True,
            find_record_types=["case", "contact"],
            id_format="GUID (e.g. 3f2504e0-4f89-11d3-9a0c-0305e82c3301)",
        )

    # ------------------------------------------------------------------------------- lifecycle

    def _auth_header(self) -> str:
        user = f"{self.settings.username}:{self.settings.password.get_secret_value()}@{self.settings.domain}"
        return "Basic " + base64.b64encode(user.encode("utf-8")).decode("ascii")

    def _secrets(self) -> list[str]:
        """What must never reach a message: the password, the Basic credential token, any cookie a server set."""
        values = [self.settings.password.get_secret_value(), self._auth_header().removeprefix("Basic ")]
        if self._client is not None:
            values += [value for value in self._client.cookies.values() if value]
        return [value for value in values if len(value) >= 4]

    def _scrub(self, text: str) -> str:
        """Wello's error bodies are quoted in messages; a proxy or debug page may echo the request in them."""
        for secret in sorted(self._secrets(), key=len, reverse=True):
            text = text.replace(secret, "[redacted]")
        return text

    async def __aenter__(self) -> WelloBackend:
        headers = {"Authorization": self._auth_header(), "Accept": "application/json"}
        if self.settings.api_version:
            headers["X-Api-Version"] = self.settings.api_version
        self._client = new_client(
            base_url=_api_root(self.settings.url),
            headers=headers,
            transport=self.context.transport,
            timeout=self.settings.timeouts,
            max_connections=self.settings.max_connections,
            retries=self.settings.retries,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise BackendError(f"backend '{self.name}' is not open")
        return self._client

    async def check(self) -> str:
        await self._get_json(self._case.entity_set, params={"$select": "id", "$top": "1"})
        version = f", API version {self.settings.api_version}" if self.settings.api_version else ""
        return (
            f"Wello at {_api_root(self.settings.url)} as {self.settings.username}@{self.settings.domain}"
            f"{version}; cases are {self._case.db_table_name}"
        )

    # --------------------------------------------------------------------------------- HTTP

    def _where(self) -> str:
        return f"Wello backend '{self.name}'"

    async def _raise_for(self, response: httpx.Response, doing: str, not_found: str | None = None) -> None:
        """Turn a non-2xx response into the matching `CrmError` (the body is read first)."""
        if response.is_success:
            return
        await response.aread()
        status = response.status_code
        detail = _clip(self._scrub(_vendor_message(response)))  # scrubbed whole, so no secret is cut in two
        said = f": {detail.rstrip('.')}" if detail else ""
        where = self._where()
        if status == 401:
            raise AuthenticationError(
                f"{where} rejected the credentials while trying to {doing} (HTTP 401){said}. Check username, "
                "password and domain in the configuration (they are sent as username:password@domain)."
            )
        if status == 403:
            raise PermissionDeniedError(
                f"{where}: the API user may not {doing} (HTTP 403){said}. Ask a Wello administrator for the right."
            )
        if status == 404:
            if not_found is not None:
                raise NotFoundError(not_found)
            raise BackendError(
                f"{where} answered HTTP 404 while trying to {doing}{said}. The URL or API version is probably "
                "wrong: check `url` "
                "and set `api_version` (sent as X-Api-Version) if your Wello requires one."
            )
        if status == 409:
            raise ConflictError(f"{where} refused to {doing} because of a conflict (HTTP 409){said}")
        if status == 413:
            raise TooLargeError(f"{where} refused to {doing}: the payload is too large for Wello (HTTP 413){said}")
        if status in (400, 422) and response.request.method in ("POST", "PUT"):
            raise InvalidInputError(f"{where} rejected the values sent to {doing} (HTTP {status}){said}")
        if status in (400, 422):
            raise BackendError(
                f"{where} refused the query to {doing} (HTTP {status}){said}. This Wello may not support an OData "
                "feature crm-mcp uses ($filter with contains/tolower, $select, $orderby, $top/$skip)."
            )
        if 300 <= status < 400:
            raise BackendError(
                f"{where} answered with a redirect (HTTP {status}) to {doing}; check `url` (https, host, no path "
                "beyond /api)"
            )
        if status >= 500:
            raise BackendError(f"{where} failed to {doing} (HTTP {status}){said}; try again later")
        raise BackendError(f"{where} refused to {doing} (HTTP {status}){said}")

    def _network_error(self, exc: httpx.HTTPError, doing: str, outcome: str = "") -> BackendError:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            kind = "could not be reached"
        elif isinstance(exc, httpx.TimeoutException):
            kind = "timed out"
        else:
            kind = "dropped the connection"
        return BackendError(
            f"{self._where()} {kind} while trying to {doing} ({type(exc).__name__}){outcome}; try again later"
        )

    async def _send(
        self,
        method: str,
        path: str,
        *,
        doing: str,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        not_found: str | None = None,
    ) -> httpx.Response:
        try:
            response = await self.client.request(method, path, params=params, json=json_body, headers=headers)
        except httpx.HTTPError as exc:
            raise self._network_error(exc, doing) from exc
        await self._raise_for(response, doing, not_found)
        return response

    async def _get_json(
        self, path: str, *, params: Mapping[str, str], doing: str = "read data", not_found: str | None = None
    ) -> Any:
        response = await self._send("GET", path, doing=doing, params=params, not_found=not_found)
        try:
            return response.json()
        except ValueError:
            raise BackendError(f"{self._where()} sent an answer that is not JSON while trying to {doing}") from None

    async def _query(
        self, entity_set: str, *, filter_: str, select: str, top: int, skip: int = 0, orderby: str | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        """One OData page: its rows and whether the server says more follow (`@odata.nextLink`)."""
        params = {"$filter": filter_, "$select": select, "$top": str(top), "$skip": str(skip)}
        if orderby:
            params["$orderby"] = orderby
        body = await self._get_json(entity_set, params=params, doing=f"query {entity_set}")
        rows = body.get("value") if isinstance(body, dict) else None
        if not isinstance(rows, list) or not all(
            isinstance(row, dict) and isinstance(row.get("id"), str) for row in rows
        ):
            raise BackendError(f"{self._where()} sent an OData answer without a 'value' list for {entity_set}")
        return rows, _has_next_link(body)

    async def _require_record(self, table: _Table, record_id: str) -> dict[str, Any]:
        rows, _ = await self._query(table.entity_set, filter_=f"id eq {record_id}", select="id", top=1)
        if not rows:
            raise NotFoundError(
                f"{table.label} {record_id} was not found on backend '{self.name}' (use find_records to look it up)"
            )
        return rows[0]

    async def _file_rows(self, filter_: str, orderby: str) -> AsyncIterator[dict[str, Any]]:
        """Every db_file row matching `filter_`, page by page (at most `MAX_SCAN_PAGES` pages)."""
        skip = 0
        for _page in range(MAX_SCAN_PAGES):
            rows, more = await self._query(
                "DbFile", filter_=filter_, select=",".join(_FILE_FIELDS), top=PAGE_SIZE, skip=skip, orderby=orderby
            )
            for row in rows:
                yield row
            skip += len(rows)
            if not rows or (len(rows) < PAGE_SIZE and not more):
                return
        raise BackendError(f"{self._where()} kept sending pages of files; stopped after {skip:,} rows")

    def _linked(self, table: _Table, record_id: str) -> str:
        return f"db_table_name eq {_quote(table.db_table_name)} and id_in_table eq {record_id}"

    # ---------------------------------------------------------------------------------- files

    async def list_case_files(self, case_id: str, *, limit: int, cursor: str | None) -> FilePage:
        case_id = require_guid(case_id, "case_id")
        if limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {limit}")
        skip = 0 if cursor is None else decode_cursor(cursor, case_id, (int,))[0]
        files: list[FileEntry] = []
        offset = skip
        more = False
        # One row more than asked tells whether another page exists; archived rows are skipped. Each request
        # asks for at most Wello's page of 20, so a short page (and no nextLink) reliably means the end.
        while True:
            want = min(limit - len(files) + 1, PAGE_SIZE)
            rows, server_more = await self._query(
                "DbFile",
                filter_=self._linked(self._case, case_id),
                select=",".join(_FILE_FIELDS),
                top=want,
                skip=offset,
                orderby="date_add,id",
            )
            for row in rows:
                if len(files) == limit:
                    more = True
                    break
                offset += 1
                if _is_live(row):
                    files.append(_entry(row))
            if more or not rows or (len(rows) < want and not server_more):
                break
        if offset == skip:
            # No row at all (not even an archived one): a missing case is an error, not an empty list.
            # Checked only then (a file row names its case), so a listing with files skips this request.
            await self._require_record(self._case, case_id)
        return FilePage(files=files, next_cursor=encode_cursor(case_id, offset) if more else None)

    async def _file_row(self, file_id: str) -> dict[str, Any]:
        rows, _ = await self._query("DbFile", filter_=f"id eq {file_id}", select=",".join(_FILE_FIELDS), top=1)
        if not rows or not _is_live(rows[0]):
            raise NotFoundError(f"file {file_id} was not found on backend '{self.name}' (list_case_files shows ids)")
        return rows[0]

    @asynccontextmanager
    async def open_file(self, file_id: str) -> AsyncIterator[Download]:
        file_id = require_guid(file_id, "file_id")
        row = await self._file_row(file_id)
        async with self._open_content(row) as download:
            yield download

    @asynccontextmanager
    async def _open_content(self, row: Mapping[str, Any]) -> AsyncIterator[Download]:
        """Stream `GET api/DbFile(id)` and hand out the decoded `file_content` as it arrives."""
        file_id = str(row["id"]).lower()
        name = _display_name(row)
        size = _size(row)
        limit = self.context.max_transfer_bytes
        if size is not None and size > limit:
            raise TooLargeError(
                f"{name!r} is {size:,} bytes, over this server's transfer limit of {limit:,} bytes "
                "(limits.max_transfer_bytes)"
            )
        doing = f"download {name!r}"
        request = self.client.build_request("GET", f"DbFile({file_id})")
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._network_error(exc, doing) from exc
        try:
            await self._raise_for(response, doing, f"file {file_id} was not found on backend '{self.name}'")
            # The size is the record's file_size, not this answer's length: a body that disagrees is
            # a record that does not match its stored bytes, which a retry will not mend.
            chunks = checked_download(
                self._decode(response, name),
                name=name,
                size=size,
                limit=limit,
                source=self._where(),
                size_from="its file_size says",
                hint="the db_file record does not match its stored bytes; check the file in Wello",
            )
            try:
                yield Download(name=name, mime_type=_mime(row), size=size, chunks=chunks)
            finally:
                await chunks.aclose()
        finally:
            await response.aclose()

    async def _decode(self, response: httpx.Response, name: str) -> AsyncIterator[bytes]:
        """The decoded `file_content` of the streamed answer; an answer that is cut off (its JSON
        unfinished) is an error. Sizes and the limit are `checked_download`'s, around this."""
        scanner = ContentScanner()
        try:
            async for piece in response.aiter_bytes():
                out = scanner.feed(piece)
                if out:
                    yield out
                if scanner.done:
                    break
        except httpx.HTTPError as exc:
            raise BackendError(
                f"the connection to {self._where()} broke while downloading {name!r} ({type(exc).__name__}); try again"
            ) from exc
        if not scanner.done:
            raise BackendError(
                f"{self._where()} sent an incomplete answer for {name!r} (after {scanner.decoded:,} bytes); try again"
            )

    # --------------------------------------------------------------------------------- photos

    async def _photo_row(self, contact_id: str) -> dict[str, Any] | None:
        """The contact's photo by crm-mcp's convention: its newest live image db_file."""
        await self._require_record(_CONTACT, contact_id)
        async with aclosing(self._file_rows(self._linked(_CONTACT, contact_id), "date_add desc,id desc")) as rows:
            async for row in rows:
                if _is_live(row) and _mime(row).startswith("image/"):
                    return row
        return None

    async def get_contact_photo(self, contact_id: str) -> Photo | None:
        contact_id = require_guid(contact_id, "contact_id")
        row = await self._photo_row(contact_id)
        if row is None:
            return None
        return Photo(photo_id=str(row["id"]).lower(), mime_type=_mime(row), size=_size(row))

    @asynccontextmanager
    async def open_contact_photo(self, contact_id: str) -> AsyncIterator[Download]:
        contact_id = require_guid(contact_id, "contact_id")
        row = await self._photo_row(contact_id)
        if row is None:
            raise NotFoundError(
                f"contact {contact_id} has no photo on backend '{self.name}' (on Wello the photo is the contact's "
                "newest image file; bind_photo adds one)"
            )
        async with self._open_content(row) as download:
            yield download

    async def bind_photo(self, contact_id: str, upload: Upload) -> Photo:
        contact_id = require_guid(contact_id, "contact_id")
        if not upload.mime_type.lower().startswith("image/"):
            await _close_stream(upload.chunks)
            raise InvalidInputError(
                f"only images can be contact photos, but {upload.name!r} is {upload.mime_type}; "
                "give a PNG, JPEG, GIF or WebP image"
            )
        entry = await self._upload(_CONTACT, contact_id, upload)
        logger.info("contact %s now has photo %s (older photos stay as contact files)", contact_id, entry.file_id)
        return Photo(photo_id=entry.file_id, mime_type=entry.mime_type, size=entry.size)

    # -------------------------------------------------------------------------------- uploads

    async def upload_attachment(self, record_type: RecordType, record_id: str, upload: Upload) -> FileEntry:
        table = self._tables.get(record_type)
        if table is None:
            await _close_stream(upload.chunks)
            raise UnsupportedError(
                f"the Wello backend attaches files to cases, contacts and accounts, not {record_type!r}"
            )
        record_id = require_guid(record_id, "record_id")
        return await self._upload(table, record_id, upload)

    async def _upload(self, table: _Table, record_id: str, upload: Upload) -> FileEntry:
        try:
            limit = self.context.max_transfer_bytes
            if upload.size > limit:
                raise TooLargeError(
                    f"{upload.name!r} is {upload.size:,} bytes, over this server's transfer limit of {limit:,} "
                    "bytes (limits.max_transfer_bytes); nothing was stored"
                )
            await self._require_record(table, record_id)
        except BaseException:
            await _close_stream(upload.chunks)
            raise
        name = shorten_name(upload.name)
        if name != upload.name:
            logger.warning("Wello allows %d characters in a file name: %r is stored as %r", MAX_NAME, upload.name, name)
        mime = upload.mime_type if _utf16_length(upload.mime_type) <= MAX_NAME else "application/octet-stream"
        file_id = str(uuid.uuid4())
        fields = {
            "id": file_id,
            "db_table_name": table.db_table_name,
            "id_in_table": record_id,
            "name": name,
            "file_name": name,
            "mime_type": mime,
            "file_size": upload.size,
        }
        prefix = (json.dumps(fields, ensure_ascii=False)[:-1] + ', "file_content": "').encode("utf-8")
        suffix = b'"}'
        length = len(prefix) + base64_length(upload.size) + len(suffix)
        body = _JsonBody(prefix, suffix, upload, self.context.max_transfer_bytes)
        doing = f"upload {name!r} to {table.label} {record_id}"
        request = self.client.build_request(
            "POST",
            "DbFile",
            content=body.stream(),
            headers={"Content-Type": "application/json", "Content-Length": str(length), "Prefer": "return=minimal"},
        )
        try:
            response = await self._send_upload(request)
        except httpx.HTTPError as exc:
            await _close_stream(upload.chunks)
            outcome = "; nothing was stored"
            if body.complete and not await self._remove_partial(fields):  # the server may have stored the file
                outcome = f"; the file may have been stored anyway (db_file {file_id}): check the {table.label}'s files"
            raise self._network_error(exc, doing, outcome) from exc
        except BaseException:  # cancelled, or the source failed (then the body is incomplete)
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_SECONDS):
                await _close_stream(upload.chunks)
                if body.complete:
                    await self._remove_partial(fields)
            raise
        if response.status_code >= 500 and not await self._remove_partial(fields):
            logger.error("db_file %s may have been stored although Wello answered %d", file_id, response.status_code)
        # The record was checked just before; Wello answers a vanished one with 422, so a 404 here means a
        # wrong URL or a missing X-Api-Version (the default 404 message says so).
        await self._raise_for(response, doing)
        logger.info("uploaded %s (%d bytes) to %s %s as db_file %s", name, upload.size, table.label, record_id, file_id)
        return FileEntry(
            file_id=file_id, name=name, mime_type=mime, size=upload.size, created_at=datetime.now(UTC), kind="file"
        )

    async def _send_upload(self, request: httpx.Request) -> httpx.Response:
        """Send the POST and read at most `MAX_ANSWER` bytes of a successful answer: with `return=minimal`
        it is just the id, and a server that ignores the preference (echoing the whole record, base64
        content included) must not make us hold the file a second time. Error answers are read whole."""
        response = await self.client.send(request, stream=True)
        try:
            if not response.is_success:
                await response.aread()
                return response
            read = 0
            async for piece in response.aiter_raw():
                read += len(piece)
                if read >= MAX_ANSWER:
                    logger.info("Wello ignored Prefer: return=minimal; stopped reading its answer after %d bytes", read)
                    break
            return response
        finally:
            await response.aclose()

    async def _remove_partial(self, fields: Mapping[str, Any]) -> bool:
        """After a failure that may have reached the server: make sure no half-made record stays listed.
        True when that is certain.

        DELETE is not documented for db_file, so it is tried first and, where refused, the record is archived
        (`is_archived = true`: "deleted, content flushed"), which hides it from every listing."""
        file_id = str(fields["id"])
        try:
            rows, _ = await self._query("DbFile", filter_=f"id eq {file_id}", select="id,is_archived", top=1)
            if not rows or not _is_live(rows[0]):
                return True
            response = await self.client.delete(f"DbFile({file_id})")
            if response.is_success:
                logger.info("removed the failed upload %s from Wello", file_id)
                return True
            refused = response.status_code
            response = await self.client.put(
                f"DbFile({file_id})", json={**fields, "is_archived": True}, headers={"Prefer": "return=minimal"}
            )
            if response.is_success:
                logger.info("archived the failed upload %s on Wello (DELETE answered %d)", file_id, refused)
                return True
            logger.error("could not remove the failed upload %s from Wello (HTTP %d)", file_id, response.status_code)
        except Exception:
            logger.exception("could not check for or remove the failed upload %s on Wello", file_id)
        return False

    # ----------------------------------------------------------------------------------- find

    async def _rows(self, entity_set: str, filter_: str, select: str, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` matching records, page by page (Wello answers at most 20 rows at a time)."""
        orderby = {"Contact": "last_name,first_name"}.get(entity_set, "reference")
        rows: list[dict[str, Any]] = []
        while len(rows) < limit:
            top = min(limit - len(rows), PAGE_SIZE)
            page, more = await self._query(
                entity_set, filter_=filter_, select=select, top=top, skip=len(rows), orderby=orderby
            )
            rows += page
            if not page or (len(page) < top and not more):
                break
        return rows[:limit]

    async def find_records(self, record_type: FindType, query: str, *, limit: int) -> list[Record]:
        words = query.split()
        if not words:
            raise InvalidInputError("query is empty: give a name, a job reference or words of a subject")
        if limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {limit}")
        if record_type == "case":
            text = " ".join(words).lower()
            select = "id,reference,subject"
            # An exact reference comes first even when more than `limit` records merely contain the text.
            exact = await self._rows(self._case.entity_set, f"tolower(reference) eq {_quote(text)}", select, limit)
            contains = f"contains(tolower(reference),{_quote(text)}) or contains(tolower(subject),{_quote(text)})"
            unique: dict[str, dict[str, Any]] = {}
            for row in exact + await self._rows(self._case.entity_set, contains, select, limit):
                unique.setdefault(str(row["id"]).lower(), row)
            return [
                Record(
                    id=record_id,
                    title=" · ".join(str(row[key]) for key in ("reference", "subject") if row.get(key)) or record_id,
                    record_type="case",
                )
                for record_id, row in list(unique.items())[:limit]
            ]
        if record_type == "contact":
            filter_ = " and ".join(
                f"(contains(tolower(first_name),{_quote(word.lower())}) or "
                f"contains(tolower(last_name),{_quote(word.lower())}))"
                for word in words
            )
            rows = await self._rows(_CONTACT.entity_set, filter_, "id,first_name,last_name", limit)
            return [
                Record(
                    id=str(row["id"]).lower(),
                    title=" ".join(str(row[key]) for key in ("first_name", "last_name") if row.get(key))
                    or str(row["id"]),
                    record_type="contact",
                )
                for row in rows[:limit]
            ]
        raise UnsupportedError(f"the Wello backend finds cases and contacts, not {record_type!r}")


class _JsonBody:
    """The streamed POST body: JSON fields, the upload's bytes as base64 (3-byte aligned), the closing."""

    def __init__(self, prefix: bytes, suffix: bytes, upload: Upload, limit: int) -> None:
        self._prefix = prefix
        self._suffix = suffix
        self._upload = upload
        self._limit = limit
        self.complete = False
        """True once every byte of the body was handed to the transport."""

    async def stream(self) -> AsyncIterator[bytes]:
        upload = self._upload
        yield self._prefix
        try:
            # A source that passes its announced size (or the limit) or ends short fails the request
            # before the closing quote is sent, so Wello stores nothing.
            chunks = checked_upload(upload, self._limit, outcome="; nothing was stored")
            async for piece in base64_encoded(chunks, ENCODE_CHUNK):
                yield piece
        finally:
            await _close_stream(upload.chunks)
        yield self._suffix
        self.complete = True
