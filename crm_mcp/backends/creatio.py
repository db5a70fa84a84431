"""Creatio (formerly bpm'online) over its OData 4 service.

What Creatio does, and how this module copes (details: the project README, "Creatio"):

- Auth `forms`: `POST /ServiceModel/AuthService.svc/Login` sets the cookies `BPMLOADER`, `.ASPXAUTH`,
  `BPMCSRF` and `UserName`. Every later request carries them, `ForceUseSession: true`, and the header
  `BPMCSRF` (the cookie's value) without which writes and `$batch` are refused with 403. A failed
  login is HTTP 200 with `Code: 1`. Auth `oauth`: a client-credentials token from `token_url`,
  cached and renewed shortly before it expires.
- An expired session shows up as an HTML login page with status 200, a 302 to the login page, or a
  401. Such an answer means the request was refused before it ran, so we log in again (once, under a
  lock shared by concurrent calls) and send it again — except a streamed upload body, which cannot be
  read twice: its new record is removed and the error says so. Any other failure of a write (5xx,
  timeout, dropped connection) may or may not have been processed: it is never resent blindly; we
  look at what exists (records carry client-chosen ids, so that is one query) and clean up or report.
  When even the look-up fails, a new record is deleted anyway (a DELETE of our own id is harmless),
  but a new photo image is kept: the contact may already point at it.
- Files live in per-parent tables (`CaseFile`, `ContactFile`, `AccountFile`) whose `Data` column is an
  OData stream; `TypeId` tells a file from a link (a URL in `Name`, no bytes). A `file_id` here is
  `<Table>.<guid>`, so reading it back knows the table. Bytes are streamed both ways; a download's
  size is its Content-Length, never the `Size` column (clients write that, and it can be wrong).
- Contact photos: `Contact.PhotoId` → `SysImage(id)/Data`. Binding a photo is POST SysImage, PUT its
  Data, PATCH the contact's PhotoId; a failure after the POST deletes the new SysImage again.
- Lookups are filtered as `Case/Id eq <guid>` (Creatio refuses `CaseId eq '<guid>'` with a type error),
  only ever with validated GUIDs; user text goes into `contains(...)` with quotes doubled.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import anyio
import httpx
from pydantic import SecretStr, field_validator, model_validator

from crm_mcp.backends._streams import checked_download, checked_upload
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
from crm_mcp.content import OCTET_STREAM, from_name
from crm_mcp.errors import (
    AuthenticationError,
    BackendError,
    CrmError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    TooLargeError,
    UnsupportedError,
)
from crm_mcp.http import new_client

__all__ = ["FILE_TYPE_FILE", "FILE_TYPE_LINK", "CreatioBackend", "CreatioSettings"]

logger = logging.getLogger(__name__)

FILE_TYPE_FILE = "529bc2f8-0ee0-df11-971b-001d60e938c6"
FILE_TYPE_LINK = "539bc2f8-0ee0-df11-971b-001d60e938c6"
FILE_TYPE_ENTITY_LINK = "549bc2f8-0ee0-df11-971b-001d60e938c6"
EMPTY_GUID = "00000000-0000-0000-0000-000000000000"

LOGIN_PATH = "/ServiceModel/AuthService.svc/Login"
JSON_TYPE = "application/json; charset=utf-8; IEEE754Compatible=true"
FILE_TABLES: dict[str, tuple[str, str]] = {
    # record type → (file table, parent entity)
    "case": ("CaseFile", "Case"),
    "contact": ("ContactFile", "Contact"),
    "account": ("AccountFile", "Account"),
}
_TABLE_NAMES = {table for table, _ in FILE_TABLES.values()}
_TOKEN_MARGIN = 60.0
"""Renew an OAuth token this many seconds before it expires (at most half its lifetime)."""
_DEFAULT_TOKEN_LIFETIME = 3600.0
_MESSAGE_LIMIT = 400

_clock = time.monotonic
"""The clock OAuth expiry is measured on (tests replace it)."""


class CreatioSettings(RemoteSettings):
    """`[backends.<name>]` with `vendor = "creatio"`."""

    vendor: Literal["creatio"]
    url: str
    """The Creatio site, e.g. `https://mycompany.creatio.com` (no `/0`)."""
    auth: Literal["forms", "oauth"] = "forms"
    username: str | None = None
    password: SecretStr | None = None
    token_url: str | None = None
    """OAuth: the identity service's token endpoint, e.g. `https://mycompany-is.creatio.com/connect/token`."""
    client_id: str | None = None
    client_secret: SecretStr | None = None
    odata_root: str = "/0/odata"
    """Path of the OData 4 service under `url`: `/0/odata` (.NET Framework) or `/odata` (.NET Core)."""

    @field_validator("url", "token_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL, e.g. 'https://mycompany.creatio.com'")
        if parts.username or parts.password:
            raise ValueError("must not contain a user name or password (use username/password or client_id)")
        return value.strip().rstrip("/")

    @field_validator("odata_root")
    @classmethod
    def _root(cls, value: str) -> str:
        value = "/" + value.strip().strip("/")
        if value == "/" or any(char in value for char in "?#"):
            raise ValueError("must be a path such as '/0/odata' (or '/odata' on .NET Core installs)")
        return value

    @model_validator(mode="after")
    def _auth_keys(self) -> CreatioSettings:
        if self.auth == "forms":
            needed = {"username": self.username, "password": self.password}
        else:
            needed = {"token_url": self.token_url, "client_id": self.client_id, "client_secret": self.client_secret}
        for key, value in needed.items():
            if value is None or not (value.get_secret_value() if isinstance(value, SecretStr) else value).strip():
                raise ValueError(f"{key} is required when auth = {self.auth!r}")
        return self


# ------------------------------------------------------------------------------------ small helpers


def _mime_for(name: str) -> str:
    """Creatio keeps no MIME type for attachments: it follows from the name, the same for list and read."""
    return from_name(name) or OCTET_STREAM


def _quote(text: str) -> str:
    """An OData string literal: single quotes doubled, so user text cannot leave the literal."""
    return "'" + text.replace("'", "''") + "'"


def _parse_time(value: Any) -> Any:
    if not isinstance(value, str) or not value or value.startswith("0001-01-01"):
        return None
    return value  # pydantic parses ISO 8601 (Creatio sends ...Z)


def _shorten(text: str) -> str:
    text = " ".join(text.split()).rstrip(". ")
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


def _odata_message(body: Any) -> str | None:
    """`error.message` plus the nested causes (`innererror`, `internalexception`), deduplicated."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None
    parts: list[str] = []

    def walk(node: Any, depth: int) -> None:
        if not isinstance(node, dict) or depth > 6:
            return
        message = node.get("message")
        if isinstance(message, str) and message.strip() and message.strip() not in parts:
            parts.append(message.strip())
        for key in ("innererror", "internalexception"):
            walk(node.get(key), depth + 1)

    walk(body["error"], 0)
    generic = "An error has occurred."
    if len(parts) > 1 and generic in parts:
        parts.remove(generic)
    return " — ".join(parts) if parts else None


def _is_html(response: httpx.Response) -> bool:
    return "text/html" in response.headers.get("content-type", "").lower()


def _is_login_redirect(response: httpx.Response) -> bool:
    if response.status_code not in (301, 302, 303, 307, 308):
        return False
    return "login" in response.headers.get("location", "").lower()


def _expired(response: httpx.Response) -> bool:
    """Creatio's ways of saying "log in first": 401, a redirect to the login page, or the login page
    itself with 200 on an endpoint that never serves HTML. Such a request was not processed."""
    if response.status_code == 401 or _is_login_redirect(response):
        return True
    return response.status_code == 200 and _is_html(response)


class _MaybeProcessed(BackendError):
    """A write failed in a way that does not tell whether Creatio applied it (5xx, timeout, lost connection)."""


class _PhotoUnknown(BackendError):
    """Setting `Contact.PhotoId` may or may not have happened and Creatio could not be asked: the new
    SysImage must not be removed, or the contact could be left pointing at a missing image."""


class _Refused(BackendError):
    """A streamed write was refused as "session expired" and its body cannot be sent again."""


@dataclass
class _Session:
    cookies: dict[str, str] = field(default_factory=dict)
    csrf: str | None = None
    token: str | None = None
    renew_at: float = 0.0
    generation: int = 0


# ----------------------------------------------------------------------------------------- backend


class CreatioBackend:
    """Creatio as a `Backend`, over OData 4 with forms (cookie) or OAuth client-credentials auth."""

    vendor: ClassVar[str] = "creatio"
    settings_model: ClassVar[type[BackendSettings]] = CreatioSettings

    def __init__(self, name: str, settings: CreatioSettings, context: BackendContext) -> None:
        self.name = name
        self.settings = settings
        self.context = context
        self._client: httpx.AsyncClient | None = None
        self._session = _Session()
        self._logged_in = False
        self._auth_lock = anyio.Lock()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            upload_record_types=["case", "contact", "account"],
            contact_photos=True,
            bind_photo=True,
            find_record_types=["case", "contact"],
            id_format="GUID (e.g. 509c189d-37a0-49d5-80f4-7de9ab389f3a)",
        )

    # ------------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> CreatioBackend:
        # No network here: the server starts even when Creatio is down; `check` logs in.
        self._client = new_client(
            base_url=self.settings.url,
            headers={"Accept": "application/json"},
            transport=self.context.transport,
            timeout=self.settings.timeouts,
            max_connections=self.settings.max_connections,
            retries=self.settings.retries,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        client, self._client = self._client, None
        self._logged_in = False
        self._session = _Session()
        if client is not None:
            await client.aclose()

    @property
    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise BackendError(f"backend '{self.name}' is not open (use it inside 'async with')")
        return self._client

    def _odata(self, path: str) -> str:
        return f"{self.settings.odata_root}/{path}"

    async def check(self) -> str:
        await self._authenticate(force=True)
        await self._get_json("Case", {"$select": "Id", "$top": "1"}, "read cases")
        who = (
            f"forms login as {self.settings.username!r}"
            if self.settings.auth == "forms"
            else f"OAuth client {self.settings.client_id!r}"
        )
        return f"Creatio at {self.settings.url} ({who}): OData 4 at {self.settings.odata_root} answers"

    # ----------------------------------------------------------------------------------- auth

    def _secrets(self) -> list[str]:
        values = [
            self.settings.password.get_secret_value() if self.settings.password else "",
            self.settings.client_secret.get_secret_value() if self.settings.client_secret else "",
            self._session.csrf or "",
            self._session.token or "",
            *(value for name, value in self._session.cookies.items() if name != "UserName"),
        ]
        return [value for value in values if len(value) >= 4]

    def _scrub(self, text: str) -> str:
        """Never let a secret reach a message, even if Creatio echoes one back."""
        for secret in self._secrets():
            text = text.replace(secret, "[redacted]")
        return text

    async def _authenticate(self, *, force: bool = False, failed_generation: int | None = None) -> None:
        """Log in (forms) or fetch a token (oauth) once, however many calls ask at the same time."""
        async with self._auth_lock:
            session = self._session
            if failed_generation is not None and session.generation != failed_generation:
                return  # another call logged in again meanwhile
            fresh = self._logged_in and (self.settings.auth == "forms" or _clock() < session.renew_at)
            if fresh and not force and failed_generation is None:
                return
            if self.settings.auth == "forms":
                await self._forms_login()
            else:
                await self._fetch_token()
            self._logged_in = True
            self._session.generation = session.generation + 1

    async def _forms_login(self) -> None:
        settings = self.settings
        assert settings.username is not None
        assert settings.password is not None
        body = {"UserName": settings.username, "UserPassword": settings.password.get_secret_value()}
        try:
            response = await self._http.post(
                LOGIN_PATH,
                json=body,
                headers={"ForceUseSession": "true", "Content-Type": "application/json; charset=utf-8"},
            )
        except (httpx.HTTPError, OSError) as exc:
            raise BackendError(
                f"cannot reach Creatio at {settings.url} to log in ({type(exc).__name__}); "
                "check the url and the network"
            ) from None
        self._http.cookies.clear()
        if response.status_code == 404 or (response.status_code == 200 and _is_html(response)):
            raise BackendError(
                f"{settings.url}{LOGIN_PATH} is not Creatio's login service (HTTP {response.status_code}); "
                "check the backend's url (the site address, without /0)"
            )
        if response.status_code != 200:
            raise AuthenticationError(
                f"Creatio login as {settings.username!r} failed with HTTP {response.status_code}; "
                "check the url, username and password of this backend"
            )
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or answer.get("Code") != 0:
            detail = answer.get("Message") if isinstance(answer, dict) else None
            detail = f": {self._scrub(_shorten(str(detail)))}" if detail else ""
            raise AuthenticationError(
                f"Creatio login failed for user {settings.username!r}{detail}; check username and password "
                f"in [backends.{self.name}] (a locked or expired password also fails here)"
            )
        cookies = {name: value for name, value in response.cookies.items()}
        if not cookies:
            raise AuthenticationError("Creatio accepted the login but set no session cookies; check the url")
        self._session = _Session(cookies=cookies, csrf=cookies.get("BPMCSRF"), generation=self._session.generation)
        logger.info("logged in to Creatio at %s as %s", settings.url, settings.username)

    async def _fetch_token(self) -> None:
        settings = self.settings
        assert settings.token_url is not None
        assert settings.client_secret is not None
        form = {
            "grant_type": "client_credentials",
            "client_id": settings.client_id or "",
            "client_secret": settings.client_secret.get_secret_value(),
        }
        try:
            response = await self._http.post(settings.token_url, data=form)
        except (httpx.HTTPError, OSError) as exc:
            raise BackendError(
                f"cannot reach the Creatio identity service at {settings.token_url} ({type(exc).__name__})"
            ) from None
        self._http.cookies.clear()
        try:
            answer = response.json()
        except ValueError:
            answer = None
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if response.status_code != 200 or not isinstance(token, str) or not token:
            reason = answer.get("error") if isinstance(answer, dict) else None
            raise AuthenticationError(
                f"Creatio's identity service refused the OAuth client {settings.client_id!r} "
                f"(HTTP {response.status_code}{', ' + self._scrub(str(reason)) if reason else ''}); "
                f"check token_url, client_id and client_secret in [backends.{self.name}]"
            )
        lifetime = answer.get("expires_in") if isinstance(answer, dict) else None
        seconds = float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 else _DEFAULT_TOKEN_LIFETIME
        margin = min(_TOKEN_MARGIN, seconds / 2)
        self._session = _Session(token=token, renew_at=_clock() + seconds - margin, generation=self._session.generation)
        logger.info("got an OAuth token for Creatio at %s (valid %.0f s)", settings.url, seconds)

    def _auth_headers(self) -> dict[str, str]:
        session = self._session
        if self.settings.auth == "oauth":
            return {"Authorization": f"Bearer {session.token}"}
        headers = {"ForceUseSession": "true"}
        if session.cookies:
            headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in session.cookies.items())
        if session.csrf:
            headers["BPMCSRF"] = session.csrf
        return headers

    def _keep_cookies(self, response: httpx.Response, generation: int) -> None:
        """Creatio renews `.ASPXAUTH` (sliding expiry) on ordinary responses: keep the newest values."""
        if self.settings.auth != "forms" or "set-cookie" not in response.headers:
            return
        if self._session.generation == generation:
            for name, value in response.cookies.items():
                self._session.cookies[name] = value
                if name == "BPMCSRF":
                    self._session.csrf = value
        self._http.cookies.clear()

    # -------------------------------------------------------------------------------- requests

    async def _send(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content: AsyncIterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send one request with auth; recover from an expired session. Returns a response that is
        not an expiry answer (maybe an error status). Passing failures (503, 429, a lost connection)
        are retried below this, by the client's `RetryTransport`, for requests the shared rule allows.

        Writes: an expiry answer means "not processed", so a write with a JSON body is sent once more
        after the new login; a streamed body cannot be, and raises `_Refused`. Any other failure of a
        write raises `_MaybeProcessed`, never a resend.
        """
        write = method != "GET"
        relogged = False
        while True:
            await self._authenticate()
            generation = self._session.generation
            request_headers = {**self._auth_headers(), **(headers or {})}
            if body is not None:
                request_headers["Content-Type"] = JSON_TYPE
            request = self._http.build_request(
                method,
                path,
                params=params,
                content=json.dumps(body).encode() if body is not None else content,
                headers=request_headers,
            )
            try:
                response = await self._http.send(request, stream=stream)
            except (httpx.TransportError, OSError) as exc:
                logger.warning("Creatio %s %s failed: %s", method, path, type(exc).__name__)
                if write:
                    raise _MaybeProcessed(
                        f"the connection to Creatio failed while trying to {what} ({type(exc).__name__})"
                    ) from None
                raise BackendError(
                    f"the connection to Creatio at {self.settings.url} failed while trying to {what} "
                    f"({type(exc).__name__}); check the network and try again"
                ) from None
            logger.debug("Creatio %s %s → %d", method, path, response.status_code)
            self._keep_cookies(response, generation)
            if _expired(response):
                await response.aclose()
                if relogged:
                    raise AuthenticationError(
                        f"Creatio refused to {what} as not logged in, right after a fresh login; check that the "
                        f"user of backend '{self.name}' may use the OData service"
                    )
                logger.info("Creatio session expired (HTTP %d); logging in again", response.status_code)
                relogged = True
                await self._authenticate(failed_generation=generation)
                if content is not None:
                    raise _Refused(f"Creatio's session expired before it accepted the bytes to {what}")
                continue
            return response

    async def _error(self, response: httpx.Response, what: str, *, state: str = "") -> CrmError:
        """The clear error for a failed answer; reads its body (small) first."""
        with suppress(httpx.HTTPError):
            await response.aread()
        status = response.status_code
        detail: str | None = None
        if not _is_html(response):
            try:
                detail = _odata_message(response.json())
            except ValueError:
                detail = None
        if detail is None and not _is_html(response) and response.content and len(response.content) < 400:
            detail = response.text.strip() or None
        detail_text = f": {self._scrub(_shorten(detail))}" if detail else ""
        tail = f" {state}" if state else ""
        if status == 404 and _is_html(response):
            entity = response.request.url.path.removeprefix(self.settings.odata_root + "/").split("(")[0]
            return BackendError(
                f"Creatio has no OData entity set {entity!r} at {self.settings.url}{self.settings.odata_root} "
                f"(the web server answered with its HTML 404 page): check odata_root ('/0/odata', or '/odata' on "
                f".NET Core installs) and that the object is available to OData{tail}"
            )
        if status == 401:
            return AuthenticationError(f"Creatio refused the credentials while trying to {what}{detail_text}{tail}")
        if status == 403:
            return PermissionDeniedError(
                f"Creatio refused to {what} (403 Forbidden){detail_text}: the user of backend '{self.name}' lacks "
                f"the permission, or the BPMCSRF check failed{tail}"
            )
        if status == 413:
            return TooLargeError(
                f"Creatio refused to {what}: the file is larger than it accepts (system setting MaxFileSize){tail}"
            )
        if status == 503:
            after = response.headers.get("retry-after")
            hint = f"; it asks to retry after {after} s" if after and after.strip().isdigit() else ""
            return BackendError(f"Creatio is unavailable (503) and could not {what}{hint}{tail}")
        if status >= 500:
            return BackendError(f"Creatio failed (HTTP {status}) while trying to {what}{detail_text}{tail}")
        if 300 <= status < 400:
            return BackendError(
                f"Creatio redirected the request to {what} (HTTP {status}); "
                f"check the backend's url and odata_root{tail}"
            )
        return BackendError(f"Creatio refused to {what} (HTTP {status}){detail_text}{tail}")

    async def _get_json(self, path: str, params: Mapping[str, str] | None, what: str) -> Any:
        response = await self._send("GET", self._odata(path), params=params, what=what)
        if response.status_code != 200:
            raise await self._error(response, what)
        try:
            return response.json()
        except ValueError:
            raise BackendError(f"Creatio answered the request to {what} with something that is not JSON") from None

    async def _rows(self, path: str, params: Mapping[str, str], what: str) -> list[dict[str, Any]]:
        answer = await self._get_json(path, params, what)
        rows = answer.get("value") if isinstance(answer, dict) else None
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise BackendError(f"Creatio's answer to {what} has no 'value' list")
        return rows

    async def _one(self, entity: str, record_id: str, select: str, what: str) -> dict[str, Any] | None:
        rows = await self._rows(entity, {"$filter": f"Id eq {record_id}", "$select": select, "$top": "1"}, what)
        return rows[0] if rows else None

    async def _require(self, entity: str, record_id: str, select: str = "Id") -> dict[str, Any]:
        what = {"Case": "case", "Contact": "contact", "Account": "account"}.get(entity, entity)
        row = await self._one(entity, record_id, select, f"look up {what} {record_id}")
        if row is None:
            raise self._missing(what, record_id)
        return row

    def _missing(self, what: str, record_id: str) -> NotFoundError:
        hints = {
            "case": "use find_records with record_type='case' to look up the case id",
            "contact": "use find_records with record_type='contact' to look up the contact id",
            "account": "check the account id in Creatio (find_records looks up cases and contacts)",
            "file": "use list_case_files to see a case's current files",
        }
        hint = hints.get(what, "check the id")
        return NotFoundError(f"{what} {record_id} was not found on backend '{self.name}' (Creatio); {hint}")

    async def _write(
        self, method: str, path: str, what: str, *, body: Any = None, ok: tuple[int, ...] = (200, 201, 204)
    ) -> httpx.Response:
        response = await self._send(method, self._odata(path), body=body, what=what)
        if response.status_code in ok:
            await response.aread()
            return response
        error = await self._error(response, what)
        if response.status_code >= 500:
            raise _MaybeProcessed(str(error))
        raise error

    async def _delete_quietly(self, path: str, what: str) -> bool:
        """Best-effort cleanup; True when the record is gone (deleted now or never there)."""
        try:
            response = await self._send("DELETE", self._odata(path), what=what)
            await response.aread()
        except CrmError:
            logger.warning("Creatio cleanup failed: %s", what)
            return False
        if response.status_code in (200, 204) or (response.status_code == 404 and not _is_html(response)):
            return True  # an OData 404 means the record is not there; an HTML 404 means a wrong address
        logger.warning("Creatio cleanup %s answered HTTP %d", what, response.status_code)
        return False

    async def _exists(self, entity: str, record_id: str) -> bool | None:
        """Whether a record exists, or None when even that cannot be found out."""
        try:
            return await self._one(entity, record_id, "Id", f"check {entity} {record_id}") is not None
        except CrmError:
            return None

    # ---------------------------------------------------------------------------------- files

    async def list_case_files(self, case_id: str, *, limit: int, cursor: str | None) -> FilePage:
        case_id = require_guid(case_id, "case_id")
        if limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {limit}")
        skip = 0 if cursor is None else decode_cursor(cursor, case_id, (int,))[0]
        rows = await self._rows(
            "CaseFile",
            {
                "$filter": f"Case/Id eq {case_id}",
                "$select": "Id,Name,Size,CreatedOn,TypeId",
                "$orderby": "CreatedOn,Id",
                "$top": str(limit + 1),
                "$skip": str(skip),
            },
            f"list the files of case {case_id}",
        )
        if skip == 0 and not rows:
            # A missing case is an error, not an empty list. Checked only when nothing came back (a file
            # row names its case), so a listing with files costs one request, not two in sequence.
            await self._require("Case", case_id)
        more = len(rows) > limit
        entries = [_file_entry("CaseFile", row) for row in rows[:limit]]
        return FilePage(files=entries, next_cursor=encode_cursor(case_id, skip + limit) if more else None)

    @asynccontextmanager
    async def open_file(self, file_id: str) -> AsyncIterator[Download]:
        table, record_id = _parse_file_id(file_id)
        row = await self._one(table, record_id, "Id,Name,Size,TypeId", f"look up file {file_id}")
        if row is None:
            raise self._missing("file", file_id)
        entry = _file_entry(table, row)
        if entry.kind == "link":
            raise InvalidInputError(
                f"file {file_id} is a link to {entry.url or 'another place'}, not a file: it has no bytes to read"
            )
        # No limit check on the `Size` column here: clients write it and it can be wrong. The
        # announced length (or the count while streaming) decides.
        async with self._download(f"{table}({record_id})/Data", entry.name, entry.mime_type) as download:
            yield download

    def _check_download(self, name: str, size: int | None) -> None:
        limit = self.context.max_transfer_bytes
        if size is not None and size > limit:
            raise TooLargeError(
                f"{name!r} is {size:,} bytes, over this server's transfer limit of {limit:,} bytes "
                "(limits.max_transfer_bytes)"
            )

    @asynccontextmanager
    async def _download(self, path: str, name: str, mime: str) -> AsyncIterator[Download]:
        """Stream `path`'s bytes. The size is what the answer announces (Content-Length), never the
        record's `Size` column: clients write that column themselves and it can be wrong, while a
        `Download.size` must be exact (copies between records rely on it)."""
        what = f"read the bytes of {name!r}"
        response = await self._send("GET", self._odata(path), what=what, stream=True)
        try:
            if response.status_code == 204:
                yield Download(name=name, mime_type=mime, size=0, chunks=_no_chunks())
                return
            if response.status_code != 200:
                if response.status_code == 404 and not _is_html(response):
                    raise NotFoundError(f"the bytes of {name!r} are gone from Creatio ({path}); list the files again")
                raise await self._error(response, what)
            announced = response.headers.get("content-length", "").strip()
            encoded = response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity")
            # A compressed answer announces the compressed length; the bytes we hand on are decoded.
            length = int(announced) if announced.isdigit() and not encoded else None
            self._check_download(name, length)
            yield Download(name=name, mime_type=mime, size=length, chunks=self._chunks(response, name, length))
        finally:
            await response.aclose()

    def _chunks(self, response: httpx.Response, name: str, expected: int | None) -> AsyncIterator[bytes]:
        """The answer's bytes, checked against the limit and its Content-Length (`checked_download`)."""

        def broken(exc: BaseException, received: int) -> BackendError:
            return BackendError(
                f"the connection to Creatio broke after {received:,} bytes of {name!r} ({type(exc).__name__}); "
                "nothing complete was received, try again"
            )

        return checked_download(
            response.aiter_bytes(),
            name=name,
            size=expected,
            limit=self.context.max_transfer_bytes,
            source="Creatio",
            size_from="its Content-Length announced",
            broken_on=(httpx.TransportError, OSError),
            broken=broken,
        )

    # --------------------------------------------------------------------------------- photos

    async def _photo_row(self, contact_id: str) -> dict[str, Any] | None:
        contact = await self._require("Contact", contact_id, "Id,PhotoId")
        photo_id = contact.get("PhotoId")
        if not isinstance(photo_id, str) or photo_id in ("", EMPTY_GUID):
            return None
        try:
            photo_id = str(uuid.UUID(photo_id))
        except ValueError:
            raise BackendError(f"Creatio gave contact {contact_id} a PhotoId that is not a GUID") from None
        image = await self._one("SysImage", photo_id, "Id,Name,MimeType", f"look up the photo of contact {contact_id}")
        if image is None:
            logger.warning("contact %s points at SysImage %s, which does not exist", contact_id, photo_id)
        return image

    async def get_contact_photo(self, contact_id: str) -> Photo | None:
        contact_id = require_guid(contact_id, "contact_id")
        image = await self._photo_row(contact_id)
        if image is None:
            return None
        return Photo(photo_id=str(image["Id"]), mime_type=_image_mime(image), size=None)

    @asynccontextmanager
    async def open_contact_photo(self, contact_id: str) -> AsyncIterator[Download]:
        contact_id = require_guid(contact_id, "contact_id")
        image = await self._photo_row(contact_id)
        if image is None:
            raise NotFoundError(
                f"contact {contact_id} has no photo on backend '{self.name}' (get_contact_photo shows whether a "
                "contact has one; bind_photo sets it)"
            )
        name = str(image.get("Name") or f"photo-{contact_id}")
        async with self._download(f"SysImage({image['Id']})/Data", name, _image_mime(image)) as download:
            yield download

    async def bind_photo(self, contact_id: str, upload: Upload) -> Photo:
        contact_id = require_guid(contact_id, "contact_id")
        if not upload.mime_type.lower().startswith("image/"):
            raise InvalidInputError(
                f"only images can be contact photos, but {upload.name!r} is {upload.mime_type}; "
                "give a PNG, JPEG, GIF or WebP image"
            )
        self._check_upload(upload)
        await self._require("Contact", contact_id)
        image_id = str(uuid.uuid4())
        what = f"create the image record for {upload.name!r}"
        await self._create(
            "SysImage", image_id, {"Id": image_id, "Name": upload.name, "MimeType": upload.mime_type}, what
        )
        try:
            await self._put_bytes("SysImage", image_id, upload)
            await self._set_photo(contact_id, image_id)
        except _PhotoUnknown:
            raise  # the contact may point at the new image: it must stay
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                removed = await self._delete_quietly(f"SysImage({image_id})", f"remove image {image_id}")
            if isinstance(exc, CrmError):
                state = (
                    "the new image was removed again and the contact's photo is unchanged"
                    if removed
                    else f"the contact's photo is unchanged, but the unused image record SysImage {image_id} could "
                    "not be removed"
                )
                raise _public(exc, state) from None
            raise
        logger.info("contact %s now has photo %s", contact_id, image_id)
        return Photo(photo_id=image_id, mime_type=upload.mime_type, size=upload.size)

    async def _set_photo(self, contact_id: str, image_id: str) -> None:
        what = f"set the photo of contact {contact_id}"
        try:
            await self._write("PATCH", f"Contact({contact_id})", what, body={"PhotoId": image_id})
        except _MaybeProcessed as exc:
            # Maybe applied: look before deciding (never PATCH blindly again).
            try:
                row = await self._one("Contact", contact_id, "Id,PhotoId", f"check contact {contact_id}")
            except CrmError:
                raise _PhotoUnknown(
                    f"{exc}; whether contact {contact_id} now shows the new photo is unknown (Creatio could not be "
                    f"asked), so the new image SysImage {image_id} was kept; check the contact's photo in Creatio"
                ) from None
            if row is not None and str(row.get("PhotoId", "")).lower() == image_id:
                logger.info("the PATCH of contact %s failed but was applied", contact_id)
                return
            raise BackendError(str(exc)) from None

    # -------------------------------------------------------------------------------- uploads

    def _check_upload(self, upload: Upload) -> None:
        limit = self.context.max_transfer_bytes
        if upload.size > limit:
            raise TooLargeError(
                f"{upload.name!r} is {upload.size:,} bytes, over this server's transfer limit of {limit:,} bytes "
                "(limits.max_transfer_bytes)"
            )

    async def upload_attachment(self, record_type: RecordType, record_id: str, upload: Upload) -> FileEntry:
        if record_type not in FILE_TABLES:
            raise UnsupportedError(
                f"Creatio backends attach files to cases, contacts and accounts, not {record_type!r}"
            )
        record_id = require_guid(record_id, "record_id")
        table, parent = FILE_TABLES[record_type]
        self._check_upload(upload)
        await self._require(parent, record_id)
        file_id = str(uuid.uuid4())
        body = {
            "Id": file_id,
            "Name": upload.name,
            f"{parent}Id": record_id,
            "TypeId": FILE_TYPE_FILE,
            "Size": upload.size,
        }
        await self._create(
            table, file_id, body, f"create the file record for {upload.name!r} on {record_type} {record_id}"
        )
        try:
            await self._put_bytes(table, file_id, upload)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                removed = await self._delete_quietly(f"{table}({file_id})", f"remove file record {file_id}")
            if isinstance(exc, CrmError):
                state = (
                    "the file record was removed again, nothing was stored"
                    if removed
                    else f"the empty file record {table} {file_id} could not be removed; delete it in Creatio"
                )
                raise _public(exc, state) from None
            raise
        logger.info("uploaded %s (%d bytes) to %s %s as %s", upload.name, upload.size, record_type, record_id, file_id)
        return FileEntry(
            file_id=f"{table}.{file_id}",
            name=upload.name,
            mime_type=_mime_for(upload.name),
            size=upload.size,
            kind="file",
        )

    async def _create(self, table: str, record_id: str, body: dict[str, Any], what: str) -> None:
        """POST a record with a client-chosen id. If the outcome is unknown, look: never POST twice."""
        try:
            await self._write("POST", table, what, body=body, ok=(200, 201))
        except _MaybeProcessed as exc:
            exists = await self._exists(table, record_id)
            if exists is False:
                state = "no record was created; nothing was stored"
            else:
                # Created, or unknown: a DELETE of the id we chose is safe either way (404 = never made).
                removed = await self._delete_quietly(f"{table}({record_id})", f"remove {table} {record_id}")
                if removed:
                    state = (
                        "the record had been created and was removed again; nothing was stored"
                        if exists
                        else f"the record {table} {record_id} is not there (removed in case it had been created); "
                        "nothing was stored"
                    )
                elif exists:
                    state = f"the record {table} {record_id} was created and could not be removed; delete it in Creatio"
                else:
                    state = f"whether the record {table} {record_id} was created is unknown; check in Creatio"
            raise BackendError(f"{exc}; {state}") from None

    async def _put_bytes(self, table: str, record_id: str, upload: Upload) -> None:
        what = f"upload the bytes of {upload.name!r}"
        response = await self._send(
            "PUT",
            self._odata(f"{table}({record_id})/Data"),
            what=what,
            content=checked_upload(upload, self.context.max_transfer_bytes),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(upload.size)},
        )
        await response.aread()
        if response.status_code not in (200, 201, 204):
            raise await self._error(response, what)

    # ----------------------------------------------------------------------------------- find

    async def find_records(self, record_type: FindType, query: str, *, limit: int) -> list[Record]:
        text = " ".join(query.split())
        if not text:
            raise InvalidInputError("query is empty: give a name, a case number or words of a subject")
        if limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {limit}")
        literal = _quote(text)
        if record_type == "contact":
            rows = await self._rows(
                "Contact",
                {
                    "$filter": f"contains(Name,{literal})",
                    "$select": "Id,Name",
                    "$orderby": "Name,Id",
                    "$top": str(limit),
                },
                "find contacts",
            )
            return [Record(id=str(row["Id"]), title=str(row.get("Name") or ""), record_type="contact") for row in rows]
        if record_type == "case":
            rows = await self._rows(
                "Case",
                {
                    "$filter": f"contains(Number,{literal}) or contains(Subject,{literal})",
                    "$select": "Id,Number,Subject",
                    "$orderby": "Number,Id",
                    "$top": str(limit),
                },
                "find cases",
            )
            folded = text.casefold()
            rows.sort(key=lambda row: str(row.get("Number") or "").casefold() != folded)  # exact number first
            return [
                Record(
                    id=str(row["Id"]),
                    title=f"{row.get('Number') or ''} · {row.get('Subject') or ''}",
                    record_type="case",
                )
                for row in rows
            ]
        raise UnsupportedError(f"Creatio backends find cases and contacts, not {record_type!r}")


# ---------------------------------------------------------------------------------- free functions


def _public(exc: CrmError, state: str) -> CrmError:
    """The error to show after a cleanup: the same kind (internal kinds as `BackendError`), with the state added."""
    kind = BackendError if isinstance(exc, _MaybeProcessed | _Refused) else type(exc)
    return kind(f"{exc}; {state}")


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover -- makes this an async generator


def _image_mime(image: Mapping[str, Any]) -> str:
    mime = image.get("MimeType")
    if isinstance(mime, str) and "/" in mime:
        return mime.split(";", 1)[0].strip().lower()
    return from_name(str(image.get("Name") or "")) or OCTET_STREAM


def _file_entry(table: str, row: Mapping[str, Any]) -> FileEntry:
    record_id = str(row.get("Id", "")).lower()
    name = str(row.get("Name") or "")
    type_id = str(row.get("TypeId") or "").lower()
    size = row.get("Size")
    created = _parse_time(row.get("CreatedOn"))
    if type_id in (FILE_TYPE_LINK, FILE_TYPE_ENTITY_LINK):
        url = name if name.lower().startswith(("http://", "https://")) else None
        return FileEntry(
            file_id=f"{table}.{record_id}",
            name=name,
            mime_type="text/uri-list",
            size=None,
            created_at=created,
            kind="link",
            url=url,
        )
    return FileEntry(
        file_id=f"{table}.{record_id}",
        name=name,
        mime_type=_mime_for(name),
        size=size if isinstance(size, int) and size >= 0 else None,
        created_at=created,
        kind="file",
    )


def _parse_file_id(file_id: str) -> tuple[str, str]:
    table, dot, rest = file_id.strip().partition(".")
    if not dot or table not in _TABLE_NAMES:
        raise InvalidInputError(
            f"file_id {file_id!r} is not a valid id: Creatio file ids look like 'CaseFile.<GUID>' "
            "(copy it exactly as list_case_files or upload_attachment returned it)"
        )
    return table, require_guid(rest, "file_id")
