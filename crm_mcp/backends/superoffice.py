"""SuperOffice CRM over its NetServer SOAP web services (Services88, SOAP 1.1 document/literal).

What SuperOffice does, and how this module copes (details: the project README, "SuperOffice"):

- Endpoints `{url}/Remote/Services88/{Agent}.svc`, SOAPAction `{ns}/{Agent}/{Operation}`, the
  headers `ApplicationToken`, `Credentials/Ticket` and `TimeZone` inside `<soap:Header>` (the
  documentation's SOAP 1.2 examples with headers outside the Header element are wrong; the WSDL
  binding is SOAP 1.1). Envelopes are built by `_soap` and large `base64Binary` payloads stream
  both ways.
- Auth: `SoPrincipal.AuthenticateUsernamePassword` (or `AuthenticateWithAccessToken`) gives a
  ticket, reused by every call and renewed once when SuperOffice says it expired. A pre-issued
  ticket is used as it is (it cannot be renewed: its expiry is an `AuthenticationError`).
- Errors arrive as an `ExceptionInfo` response header (with `Succeeded = false`) or as a SOAP fault:
  both become one clear error with `FriendlyText` when present, never raw XML.
- "Case" = Ticket (a request in SuperOffice Service). Its files are the attachments of its
  messages (`Ticket.GetTicketAttachments`), read with `Ticket.GetAttachmentStream`. An upload is
  `SaveAttachmentEntity` → `UploadAttachment` → a new *internal* message on the ticket
  (`SaveTicketMessageEntity`) → `AddAttachments`: a customer's message is never altered.
- "Contact" = Person. Its photo is the person image (`BLOB.GetPersonImage`, empty = no photo;
  bind = `BLOB.SaveImageStream` → `BLOB.ChangePersonImage`; if the second step fails, the person's
  image is re-read first — a lost answer may hide a bind that happened — and only then is the stored
  image deleted with `BLOB.DeleteBlobEntity`). A file attached to a contact is a
  Document on the person (`Document.SaveDocumentEntity` → `Document.SetDocumentStream`).
- `GetPersonImage` and `GetTicketAttachments` answer empty for ids that do not exist, so the
  person (`Person.GetPerson`) or ticket (`Ticket.GetTicket`) is checked first.
- Finding: `Archive.GetArchiveListByColumns` with the `FindPerson` / `FindTicket` providers
  (`fullName contains`, `title contains`); a ticket number is `Ticket.GetTicket`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit
from xml.etree import ElementTree as ET

import anyio
import httpx
from pydantic import SecretStr, field_validator, model_validator

from crm_mcp.backends import _soap
from crm_mcp.backends._soap import Ints, Stream, Strings, child, children, integer, text
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
    shown_id,
)
from crm_mcp.content import OCTET_STREAM, from_name, sniff
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
from crm_mcp.retry import IDEMPOTENT

__all__ = ["SuperOfficeBackend", "SuperOfficeSettings"]

logger = logging.getLogger(__name__)

SERVICES = "Remote/Services88"
_MESSAGE_LIMIT = 400
_SMALL_LIMIT = 16 * 1024 * 1024
"""Largest non-streamed SOAP answer read into memory (lists, entities)."""
_INTERNAL_NOTE = "File attached by crm-mcp: {name} (upload {reference})"
"""The body of the internal message that carries an upload. The reference finds the message again
when SuperOffice's answer to its creation is lost."""


class SuperOfficeSettings(RemoteSettings):
    """`[backends.<name>]` with `vendor = "superoffice"`."""

    vendor: Literal["superoffice"]
    url: str
    """The tenant's base address: `https://online.superoffice.com/Cust12345` (Online) or the NetServer
    site on-site, e.g. `https://crm.example.com/SuperOffice`. `/Remote/Services88/...` is appended."""
    username: str | None = None
    password: SecretStr | None = None
    ticket: SecretStr | None = None
    """A pre-issued credentials ticket (`7T:...`); it cannot be renewed when it expires."""
    access_token: SecretStr | None = None
    """An OpenID Connect access token (Online); exchanged for a ticket with AuthenticateWithAccessToken."""
    application_token: SecretStr | None = None
    """The application token (client secret) of a registered app: required on Online, ignored on-site."""
    time_zone: str = "UTC"
    """Sent as `TimeZone/SoTimeZoneLocationCode` with every call."""
    document_template_id: int | None = None
    """The document template (type) of files attached to contacts, which become Documents on the person;
    unset: SuperOffice's default template."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL, e.g. 'https://online.superoffice.com/Cust12345'")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("must be a plain tenant address, without user name, password, query or fragment")
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _one_way_in(self) -> SuperOfficeSettings:
        def given(value: str | SecretStr | None) -> bool:
            if value is None:
                return False
            raw = value.get_secret_value() if isinstance(value, SecretStr) else value
            return bool(raw.strip())

        ways = [
            name
            for name, used in (
                ("username/password", given(self.username) or given(self.password)),
                ("ticket", given(self.ticket)),
                ("access_token", given(self.access_token)),
            )
            if used
        ]
        if len(ways) != 1:
            raise ValueError(
                "give exactly one way to log in: username and password, or ticket, or access_token "
                f"(got {', '.join(ways) if ways else 'none'})"
            )
        if ways[0] == "username/password" and not (given(self.username) and given(self.password)):
            raise ValueError("username and password must both be given")
        if not self.time_zone.strip():
            raise ValueError("time_zone must not be empty (e.g. 'UTC')")
        return self


# ------------------------------------------------------------------------------------- helpers


def _shorten(value: str) -> str:
    value = " ".join(value.split()).rstrip(". ")
    return value if len(value) <= _MESSAGE_LIMIT else value[: _MESSAGE_LIMIT - 1] + "…"


def _require_int(value: str, what: str) -> int:
    raw = value.strip() if isinstance(value, str) else ""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10 or int(raw) < 1 or int(raw) > 2**31 - 1:
        raise InvalidInputError(
            f"{what} {shown_id(value)} is not a valid id: SuperOffice ids are positive whole numbers such as '42'. "
            "Use find_records to look the id up."
        )
    return int(raw)


@dataclass(frozen=True)
class _Problem:
    """What SuperOffice reported (ExceptionInfo header or SOAP fault)."""

    message: str
    friendly: str | None
    kind: str
    expired: bool


def _problem(reader: _soap.ResponseReader, status: int) -> _Problem | None:
    info = reader.headers.get("ExceptionInfo")
    succeeded = text(reader.headers.get("Succeeded"))
    message = friendly = kind = ""
    if info is not None and info.get(f"{{{_soap.XSI}}}nil") != "true":
        message = text(info, "Message") or ""
        friendly = text(info, "FriendlyText") or ""
        kind = text(info, "ExceptionType") or ""
    if reader.fault is not None:
        message = message or reader.fault.message or reader.fault.code
        kind = kind or reader.fault.kind or reader.fault.code
        friendly = friendly or reader.fault.friendly or ""
    failed = bool(message or kind) or (succeeded or "").strip().lower() == "false" or reader.fault is not None
    if not failed:
        return None
    if not message and not kind:
        message = f"the call did not succeed (HTTP {status})"
    words = f"{kind} {message}".lower()
    # Only a statement about the credentials counts (a Service ticket's own errors also say "ticket").
    expired = (
        ("expire" in words and any(word in words for word in ("ticket", "credential", "session")))
        or any(phrase in words for phrase in ("ticket is invalid", "invalid ticket", "ticket is not valid"))
        or "ticketexpired" in words.replace(" ", "")
    )
    return _Problem(message=message, friendly=friendly or None, kind=kind, expired=expired)


class _Expired(BackendError):
    """SuperOffice said the ticket is no longer valid; the call was not processed."""


class _MaybeProcessed(BackendError):
    """A write failed so that whether SuperOffice applied it is unknown."""


@dataclass
class _Answer:
    reader: _soap.ResponseReader
    chunks: AsyncIterator[bytes] | None = None


# ----------------------------------------------------------------------------------------- backend


class SuperOfficeBackend:
    """SuperOffice as a `Backend`, over the NetServer SOAP services (Services88)."""

    vendor: ClassVar[str] = "superoffice"
    settings_model: ClassVar[type[BackendSettings]] = SuperOfficeSettings

    def __init__(self, name: str, settings: SuperOfficeSettings, context: BackendContext) -> None:
        self.name = name
        self.settings = settings
        self.context = context
        self._client: httpx.AsyncClient | None = None
        self._ticket: str | None = settings.ticket.get_secret_value().strip() if settings.ticket else None
        self._generation = 0
        self._auth_lock = anyio.Lock()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            upload_record_types=["case", "contact"],
            contact_photos=True,
            bind_photo=True,
            find_record_types=["case", "contact"],
            id_format="positive integer (e.g. 42): ticket id for cases, person id for contacts",
        )

    # ------------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> SuperOfficeBackend:
        self._client = new_client(
            base_url=self.settings.url + "/",
            transport=self.context.transport,
            timeout=self.settings.timeouts,
            max_connections=self.settings.max_connections,
            retries=self.settings.retries,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        client, self._client = self._client, None
        if self.settings.ticket is None:
            self._ticket = None
        if client is not None:
            await client.aclose()

    @property
    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise BackendError(f"backend '{self.name}' is not open (use it inside 'async with')")
        return self._client

    async def check(self) -> str:
        await self._authenticate(force=self.settings.ticket is None)
        await self._call("Ticket", "GetTicket", [("TicketId", 1)], what="read a ticket")
        if self.settings.username:
            who = f"user {self.settings.username!r}"
        elif self.settings.access_token:
            who = "an access token"
        else:
            who = "a pre-issued ticket"
        return f"SuperOffice at {self.settings.url} ({who}): Services88 SOAP answers"

    # ----------------------------------------------------------------------------------- auth

    def _secrets(self) -> list[str]:
        values = [
            secret.get_secret_value()
            for secret in (self.settings.password, self.settings.ticket, self.settings.access_token)
            if secret is not None
        ]
        if self.settings.application_token is not None:
            values.append(self.settings.application_token.get_secret_value())
        if self._ticket:
            values.append(self._ticket)
        return [value for value in values if len(value) >= 4]

    def _scrub(self, value: str) -> str:
        for secret in self._secrets():
            value = value.replace(secret, "[redacted]")
        return value

    def _app_token(self) -> list[tuple[str, Any]]:
        token = self.settings.application_token
        return [("ApplicationToken", token.get_secret_value())] if token is not None else []

    async def _authenticate(self, *, force: bool = False, failed_generation: int | None = None) -> None:
        async with self._auth_lock:
            if failed_generation is not None and failed_generation != self._generation:
                return  # someone renewed it meanwhile
            if self._ticket and not force and failed_generation is None:
                return
            settings = self.settings
            if settings.ticket is not None:
                if failed_generation is not None:
                    raise AuthenticationError(
                        f"the ticket configured for backend '{self.name}' has expired or is not valid; "
                        "configure a new ticket, or username/password or access_token (which renew themselves)"
                    )
                self._ticket = settings.ticket.get_secret_value().strip()
                return
            if settings.access_token is not None:
                operation = "AuthenticateWithAccessToken"
                fields: list[tuple[str, Any]] = [("AccessToken", settings.access_token.get_secret_value())]
                who = "the configured access token"
            else:
                assert settings.password is not None
                operation = "AuthenticateUsernamePassword"
                fields = [("UserName", settings.username), ("Password", settings.password.get_secret_value())]
                who = f"user {settings.username!r}"
            answer = await self._post("SoPrincipal", operation, fields, self._app_token(), what="log in")
            reader = answer.reader
            problem = _problem(reader, 200)
            if problem is not None:
                detail = self._scrub(_shorten(problem.friendly or problem.message))
                raise AuthenticationError(
                    f"SuperOffice refused to log in {who}: {detail}; check the credentials"
                    f"{' and application_token' if settings.application_token else ''} of backend '{self.name}'"
                )
            succeeded = (text(reader.body, "AuthenticationSucceeded") or "").strip().lower() == "true"
            ticket = text(reader.body, "Credentials", "Ticket")
            if not succeeded or not ticket:
                raise AuthenticationError(
                    f"SuperOffice did not accept {who} (AuthenticationSucceeded = false); check the "
                    f"username and password (or access token) of backend '{self.name}', and on Online the "
                    "application_token"
                )
            self._ticket = ticket.strip()
            self._generation += 1
            logger.info("logged in to SuperOffice at %s as %s", settings.url, who)

    def _headers(self) -> list[tuple[str, Any]]:
        return [
            *self._app_token(),
            ("Credentials", [("Ticket", self._ticket or "")]),
            ("TimeZone", [("SoTimeZoneId", 0), ("SoTimeZoneLocationCode", self.settings.time_zone)]),
        ]

    # -------------------------------------------------------------------------------- requests

    async def _post(
        self,
        agent: str,
        operation: str,
        fields: Iterable[tuple[str, Any]],
        headers: Iterable[tuple[str, Any]],
        *,
        what: str,
        write: bool = False,
    ) -> _Answer:
        """One small exchange: the whole answer parsed (no streamed payload)."""
        async with self._exchange(agent, operation, fields, headers, what=what, write=write) as answer:
            return answer

    @asynccontextmanager
    async def _exchange(
        self,
        agent: str,
        operation: str,
        fields: Iterable[tuple[str, Any]],
        headers: Iterable[tuple[str, Any]],
        *,
        what: str,
        write: bool = False,
        payload: str | None = None,
    ) -> AsyncIterator[_Answer]:
        body = _soap.encode_request(operation, list(fields), list(headers))
        request = self._http.build_request(
            "POST",
            f"{SERVICES}/{agent}.svc",
            content=body.data if body.chunks is None else _joined(body.data, body.chunks),
            headers={
                "Content-Type": "text/xml; charset=utf-8",
                "Content-Length": str(body.length),
                "SOAPAction": f'"{_soap.NS}/{agent}/{operation}"',
            },
            # Every SOAP call is a POST; the reads among them may be sent again like a GET.
            extensions={IDEMPOTENT: not write},
        )
        try:
            response = await self._http.send(request, stream=True)
        except CrmError:
            raise
        except (httpx.TransportError, OSError) as exc:
            kind = _MaybeProcessed if write else BackendError
            raise kind(
                f"the connection to SuperOffice at {self.settings.url} failed while trying to {what} "
                f"({type(exc).__name__}); check the url and the network"
            ) from None
        try:
            reader = _soap.ResponseReader(payload=payload)
            chunks = response.aiter_bytes()
            if not _is_xml(response):
                await response.aread()
                if response.status_code >= 500:
                    raise (_MaybeProcessed if write else BackendError)(
                        f"SuperOffice failed (HTTP {response.status_code}) while trying to {what}"
                    )
                raise BackendError(
                    f"SuperOffice answered the request to {what} with HTTP {response.status_code} and no SOAP "
                    f"envelope; check that url ({self.settings.url}) is the tenant address under which "
                    f"/{SERVICES}/{agent}.svc lives"
                )
            done = await _read_head(reader, chunks, payload, what, write=write)
            if reader.envelope_ns is not None and reader.envelope_ns != _soap.SOAP11:
                raise BackendError(f"SuperOffice answered the request to {what} with a non-SOAP-1.1 envelope")
            problem = _problem(reader, response.status_code)
            if problem is not None:
                if problem.expired:
                    raise _Expired(f"SuperOffice's ticket expired ({what})")
                raise self._refusal(problem, what)
            if response.status_code != 200:
                raise BackendError(f"SuperOffice failed (HTTP {response.status_code}) while trying to {what}")
            if payload is None or done:
                yield _Answer(reader)
            else:
                yield _Answer(reader, self._payload(reader, chunks, what))
        finally:
            await response.aclose()

    async def _payload(
        self, reader: _soap.ResponseReader, chunks: AsyncIterator[bytes], what: str
    ) -> AsyncIterator[bytes]:
        for piece in reader.take():
            yield piece
        try:
            async for chunk in chunks:
                reader.feed(chunk)
                for piece in reader.take():
                    yield piece
            reader.finish()
        except ET.ParseError:
            raise BackendError(f"SuperOffice's answer to {what} was cut off or is not well-formed XML") from None
        except ValueError as exc:
            raise BackendError(f"SuperOffice's answer to {what} is broken: {exc}") from None
        except (httpx.TransportError, OSError) as exc:
            raise BackendError(
                f"the connection to SuperOffice broke while trying to {what} ({type(exc).__name__}); try again"
            ) from None
        for piece in reader.take():
            yield piece
        if reader.fault is not None:
            raise BackendError(f"SuperOffice failed while sending the data to {what}: {reader.fault.message}")

    def _refusal(self, problem: _Problem, what: str) -> CrmError:
        detail = self._scrub(_shorten(problem.friendly or problem.message))
        words = f"{problem.kind} {problem.message}".lower()
        if "accessdenied" in words.replace(" ", "") or "no rights" in words or "permission" in words:
            return PermissionDeniedError(
                f"SuperOffice refused to {what}: {detail} (the user of backend '{self.name}' lacks the right)"
            )
        if "authentic" in words or "applicationtoken" in words.replace(" ", "") or "application token" in words:
            return AuthenticationError(
                f"SuperOffice refused the credentials while trying to {what}: {detail}; check backend '{self.name}'"
            )
        return BackendError(f"SuperOffice refused to {what}: {detail}")

    async def _call(
        self, agent: str, operation: str, fields: Iterable[tuple[str, Any]], *, what: str, write: bool = False
    ) -> ET.Element | None:
        """A call with no streamed request body: renews the ticket once if it expired. Returns the
        operation's response element."""
        fields = list(fields)
        for attempt in (1, 2):
            await self._authenticate()
            generation = self._generation
            try:
                answer = await self._post(agent, operation, fields, self._headers(), what=what, write=write)
            except _Expired:
                if attempt == 2:
                    raise AuthenticationError(
                        f"SuperOffice refused the ticket again right after a fresh login while trying to {what}; "
                        f"check that the user of backend '{self.name}' may use the web services"
                    ) from None
                logger.info("SuperOffice ticket expired; logging in again")
                await self._authenticate(failed_generation=generation)
                continue
            return answer.reader.body
        raise AssertionError("unreachable")  # pragma: no cover

    @asynccontextmanager
    async def _download(
        self, agent: str, operation: str, fields: list[tuple[str, Any]], what: str
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """A streamed `Response` payload (base64Binary), decoded as it arrives."""
        for attempt in (1, 2):
            await self._authenticate()
            generation = self._generation
            try:
                async with self._exchange(
                    agent, operation, fields, self._headers(), what=what, payload="Response"
                ) as answer:
                    yield answer.chunks if answer.chunks is not None else _drained(answer.reader)
                    return
            except _Expired:
                if attempt == 2:
                    raise AuthenticationError(
                        f"SuperOffice refused the ticket again right after a fresh login while trying to {what}"
                    ) from None
                await self._authenticate(failed_generation=generation)

    async def _streamed_write(
        self, agent: str, operation: str, fields: list[tuple[str, Any]], what: str
    ) -> ET.Element | None:
        """A write whose body streams an upload once: it cannot be resent, so an expired ticket is
        renewed for next time and the write reported as failed."""
        await self._authenticate()
        generation = self._generation
        try:
            answer = await self._post(agent, operation, fields, self._headers(), what=what, write=True)
        except _Expired:
            await self._authenticate(failed_generation=generation)
            raise BackendError(
                f"SuperOffice's ticket expired while trying to {what}; the bytes could not be sent again, try again"
            ) from None
        return answer.reader.body

    # ------------------------------------------------------------------------------ existence

    async def _ticket_row(self, ticket_id: int) -> ET.Element:
        body = await self._call("Ticket", "GetTicket", [("TicketId", ticket_id)], what=f"look up ticket {ticket_id}")
        row = child(body, "Response")
        if row is None or row.get(f"{{{_soap.XSI}}}nil") == "true" or not integer(row, "TicketId"):
            raise self._missing("case", str(ticket_id))
        return row

    async def _person_row(self, person_id: int) -> ET.Element:
        body = await self._call("Person", "GetPerson", [("PersonId", person_id)], what=f"look up person {person_id}")
        row = child(body, "Response")
        if row is None or row.get(f"{{{_soap.XSI}}}nil") == "true" or not integer(row, "PersonId"):
            raise self._missing("contact", str(person_id))
        return row

    def _missing(self, what: str, record_id: str) -> NotFoundError:
        hints = {
            "case": "use find_records with record_type='case' to look up the ticket id",
            "contact": "use find_records with record_type='contact' to look up the person id",
            "file": "use list_case_files to see a case's current files",
        }
        hint = hints.get(what, "check the id")
        return NotFoundError(f"{what} {record_id} was not found on backend '{self.name}' (SuperOffice); {hint}")

    # ---------------------------------------------------------------------------------- files

    async def _attachments(self, ticket_id: int) -> list[FileEntry]:
        body = await self._call(
            "Ticket",
            "GetTicketAttachments",
            [("TicketEntityId", ticket_id)],
            what=f"list the attachments of ticket {ticket_id}",
        )
        entries = []
        for item in children(child(body, "Response"), "AttachmentEntity"):
            entry = _attachment_entry(item)
            if entry is not None:
                entries.append(entry)
        return entries

    async def list_case_files(self, case_id: str, *, limit: int, cursor: str | None) -> FilePage:
        ticket_id = _require_int(case_id, "case_id")
        if limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {limit}")
        skip = 0 if cursor is None else decode_cursor(cursor, str(ticket_id), (int,))[0]
        await self._ticket_row(ticket_id)  # an unknown ticket answers an empty list: check it exists
        entries = await self._attachments(ticket_id)
        page = entries[skip : skip + limit]
        more = len(entries) > skip + limit
        return FilePage(files=page, next_cursor=encode_cursor(str(ticket_id), skip + limit) if more else None)

    @asynccontextmanager
    async def open_file(self, file_id: str) -> AsyncIterator[Download]:
        kind, number = _parse_file_id(file_id)
        if kind == "att":
            body = await self._call(
                "Ticket", "GetAttachmentEntity", [("AttachmentEntityId", number)], what=f"look up file {file_id}"
            )
            entry = _attachment_entry(child(body, "Response"))
            if entry is None:
                raise self._missing("file", file_id)
            self._check_size(entry.name, entry.size)
            what = f"read the bytes of {entry.name!r}"
            async with self._download("Ticket", "GetAttachmentStream", [("AttachmentId", number)], what) as chunks:
                yield Download(
                    name=entry.name,
                    mime_type=entry.mime_type,
                    size=entry.size,
                    chunks=self._counted_download(chunks, entry.name, entry.size),
                )
            return
        body = await self._call(
            "Document", "GetDocumentEntity", [("DocumentEntityId", number)], what=f"look up file {file_id}"
        )
        row = child(body, "Response")
        if row is None or row.get(f"{{{_soap.XSI}}}nil") == "true" or not integer(row, "DocumentId"):
            raise self._missing("file", file_id)
        name = text(row, "Name") or text(row, "Header") or f"document-{number}"
        what = f"read the bytes of {name!r}"
        async with self._download("Document", "GetDocumentStream", [("DocumentId", number)], what) as chunks:
            yield Download(
                name=name,
                mime_type=from_name(name) or OCTET_STREAM,
                size=None,
                chunks=self._counted_download(chunks, name, None),
            )

    def _check_size(self, name: str, size: int | None) -> None:
        limit = self.context.max_transfer_bytes
        if size is not None and size > limit:
            raise TooLargeError(
                f"{name!r} is {size:,} bytes, over this server's transfer limit of {limit:,} bytes "
                "(limits.max_transfer_bytes)"
            )

    def _counted_download(self, chunks: AsyncIterator[bytes], name: str, expected: int | None) -> AsyncIterator[bytes]:
        """The decoded bytes, checked against the limit and the attachment's recorded size (`checked_download`)."""
        return checked_download(
            chunks,
            name=name,
            size=expected,
            limit=self.context.max_transfer_bytes,
            source="SuperOffice",
            size_from="its attachment record announced",
        )

    # -------------------------------------------------------------------------------- uploads

    def _check_upload(self, upload: Upload) -> None:
        self._check_size(upload.name, upload.size)

    def _payload_of(self, upload: Upload) -> Stream:
        """The upload as a streamed `base64Binary` element, checked against the limit and its size."""
        return Stream(checked_upload(upload, self.context.max_transfer_bytes), upload.size)

    async def upload_attachment(self, record_type: RecordType, record_id: str, upload: Upload) -> FileEntry:
        if record_type == "case":
            ticket_id = _require_int(record_id, "record_id")
            self._check_upload(upload)
            await self._ticket_row(ticket_id)
            return await self._upload_to_ticket(ticket_id, upload)
        if record_type == "contact":
            person_id = _require_int(record_id, "record_id")
            self._check_upload(upload)
            person = await self._person_row(person_id)
            return await self._upload_to_person(person_id, integer(person, "ContactId") or 0, upload)
        raise UnsupportedError(
            f"SuperOffice backends attach files to cases (tickets) and contacts (persons), not {record_type!r}"
        )

    async def _upload_to_ticket(self, ticket_id: int, upload: Upload) -> FileEntry:
        mime = upload.mime_type or from_name(upload.name) or OCTET_STREAM
        body = await self._call(
            "Ticket",
            "SaveAttachmentEntity",
            [
                (
                    "AttachmentEntity",
                    [
                        ("AttachmentId", 0),
                        ("Name", upload.name),
                        ("ContentType", mime),
                        ("AttSize", upload.size),
                        ("InlineImage", False),
                        ("ContentId", ""),
                    ],
                )
            ],
            what=f"create the attachment record for {upload.name!r}",
            write=True,
        )
        attachment_id = integer(body, "Response", "AttachmentId")
        if not attachment_id:
            raise BackendError(f"SuperOffice created no attachment record for {upload.name!r}")
        message_id: int | None = None
        try:
            await self._streamed_write(
                "Ticket",
                "UploadAttachment",
                [
                    ("AttachmentId", attachment_id),
                    ("Content", self._payload_of(upload)),
                ],
                f"upload the bytes of {upload.name!r}",
            )
            reference = secrets.token_hex(6)
            try:
                message = await self._call(
                    "Ticket",
                    "SaveTicketMessageEntity",
                    [
                        (
                            "TicketMessageEntity",
                            [
                                ("EjMessageId", 0),
                                ("Ticket", [("TicketId", ticket_id)]),
                                ("Author", "crm-mcp"),
                                ("Slevel", "Internal"),
                                ("Type", "Plain"),
                                ("Body", _INTERNAL_NOTE.format(name=upload.name, reference=reference)),
                            ],
                        )
                    ],
                    what=f"add an internal message for {upload.name!r} to ticket {ticket_id}",
                    write=True,
                )
            except _MaybeProcessed:
                with anyio.CancelScope(shield=True):
                    message_id = await self._find_message(ticket_id, reference)
                raise
            message_id = integer(message, "Response", "EjMessageId")
            if not message_id:
                raise BackendError(f"SuperOffice created no message to carry {upload.name!r}")
            await self._call(
                "Ticket",
                "AddAttachments",
                [("TicketMessageEntityId", message_id), ("AttachmentIds", Ints((attachment_id,)))],
                what=f"attach {upload.name!r} to the new message on ticket {ticket_id}",
                write=True,
            )
        except BaseException as exc:
            removed = True
            if message_id:
                with anyio.CancelScope(shield=True):
                    removed = await self._quietly(
                        "Ticket", "DeleteTicketMessageEntity", [("TicketMessageEntityId", message_id)]
                    )
            if isinstance(exc, CrmError):
                state = (
                    "nothing was attached to the ticket (SuperOffice has no call to delete the unattached "
                    f"attachment record {attachment_id}; it is not shown on any message)"
                    if removed
                    else f"the internal message {message_id} could not be removed; delete it in SuperOffice"
                )
                kind = BackendError if isinstance(exc, _MaybeProcessed | _Expired) else type(exc)
                raise kind(f"{exc}; {state}") from None
            raise
        logger.info(
            "uploaded %s (%d bytes) to ticket %s as attachment %s", upload.name, upload.size, ticket_id, attachment_id
        )
        return FileEntry(file_id=f"att-{attachment_id}", name=upload.name, mime_type=mime, size=upload.size)

    async def _find_message(self, ticket_id: int, reference: str) -> int | None:
        """The message crm-mcp created with `reference` when the answer to its creation was lost
        (None if SuperOffice did not create it, or it cannot be looked up)."""
        try:
            rows = await self._archive(
                "TicketMessage",
                ["id", "ticketId"],
                [("ticketId", "=", str(ticket_id)), ("body", "contains", reference)],
                5,
                f"look for the message carrying upload {reference}",
            )
        except CrmError as exc:
            logger.warning("SuperOffice: could not look for message %s on ticket %s: %s", reference, ticket_id, exc)
            return None
        found = [integer(row, "PrimaryKey") for row in rows]
        return next((number for number in found if number), None)

    async def _find_document(self, reference: str) -> int | None:
        """The document crm-mcp created with `reference` as its "our ref" when the answer to its
        creation was lost (None if there is none or it cannot be looked up)."""
        try:
            rows = await self._archive(
                "Document", ["documentId", "ourref"], [("ourref", "=", reference)], 5, "look for the new document"
            )
        except CrmError as exc:
            logger.warning("SuperOffice: could not look for document %s: %s", reference, exc)
            return None
        return next((number for row in rows if (number := integer(row, "PrimaryKey"))), None)

    async def _upload_to_person(self, person_id: int, company_id: int, upload: Upload) -> FileEntry:
        template_id = self.settings.document_template_id
        template = [("DocumentTemplateId", template_id)] if template_id else None
        reference = f"crm-mcp:{secrets.token_hex(6)}"
        try:
            body = await self._call(
                "Document",
                "SaveDocumentEntity",
                [
                    (
                        "DocumentEntity",
                        [
                            ("DocumentId", 0),
                            ("Header", upload.name),
                            ("Name", upload.name),
                            ("OurRef", reference),
                            ("DocumentTemplate", template),
                            ("Person", [("PersonId", person_id)]),
                            ("Contact", [("ContactId", company_id)] if company_id else None),
                        ],
                    )
                ],
                what=f"create the document record for {upload.name!r} on person {person_id}",
                write=True,
            )
        except _MaybeProcessed as exc:
            with anyio.CancelScope(shield=True):
                found = await self._find_document(reference)
                removed = found is not None and await self._quietly(
                    "Document", "DeleteDocumentEntity", [("DocumentEntityId", found)]
                )
            state = (
                "the document it had created was found and removed again, nothing was stored"
                if removed or found is None
                else f"the empty document {found} could not be removed; delete it in SuperOffice"
            )
            raise BackendError(f"{exc}; {state}") from None
        document_id = integer(body, "Response", "DocumentId")
        if not document_id:
            raise BackendError(f"SuperOffice created no document record for {upload.name!r}")
        try:
            await self._streamed_write(
                "Document",
                "SetDocumentStream",
                [
                    ("DocumentEntity", [("DocumentId", document_id)]),
                    ("Stream", self._payload_of(upload)),
                    ("Force", True),
                ],
                f"upload the bytes of {upload.name!r}",
            )
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                removed = await self._quietly("Document", "DeleteDocumentEntity", [("DocumentEntityId", document_id)])
            if isinstance(exc, CrmError):
                state = (
                    "the document record was removed again, nothing was stored"
                    if removed
                    else f"the empty document {document_id} could not be removed; delete it in SuperOffice"
                )
                kind = BackendError if isinstance(exc, _MaybeProcessed | _Expired) else type(exc)
                raise kind(f"{exc}; {state}") from None
            raise
        mime = from_name(upload.name) or OCTET_STREAM
        return FileEntry(file_id=f"doc-{document_id}", name=upload.name, mime_type=mime, size=upload.size)

    async def _quietly(self, agent: str, operation: str, fields: list[tuple[str, Any]]) -> bool:
        try:
            await self._call(agent, operation, fields, what=f"clean up ({operation})", write=True)
        except CrmError as exc:
            logger.warning("SuperOffice cleanup %s failed: %s", operation, exc)
            return False
        return True

    # --------------------------------------------------------------------------------- photos

    async def _photo(self, person_id: int) -> Photo | None:
        await self._person_row(person_id)
        body = await self._call(
            "BLOB", "GetBlobEntityOnPerson", [("PersonId", person_id)], what=f"look up the image of person {person_id}"
        )
        blob = child(body, "Response")
        blob_id = integer(blob, "BlobId") if blob is not None else None
        # GetPersonImage is what says whether there is an image: empty means none.
        head = b""
        async with self._download(
            "BLOB", "GetPersonImage", [("PersonId", person_id)], f"read the image of person {person_id}"
        ) as chunks:
            async for chunk in chunks:
                head += chunk
                if len(head) >= 64:
                    break
        if not head:
            return None
        mime = (text(blob, "MimeType") or "").split(";")[0].strip().lower() if blob is not None else ""
        if not mime.startswith("image/"):
            mime = sniff(head) or "image/png"
        size = integer(blob, "BlobSize") if blob is not None else None
        return Photo(photo_id=str(blob_id) if blob_id else f"person-{person_id}", mime_type=mime, size=size or None)

    async def get_contact_photo(self, contact_id: str) -> Photo | None:
        return await self._photo(_require_int(contact_id, "contact_id"))

    @asynccontextmanager
    async def open_contact_photo(self, contact_id: str) -> AsyncIterator[Download]:
        person_id = _require_int(contact_id, "contact_id")
        photo = await self._photo(person_id)
        if photo is None:
            raise NotFoundError(
                f"contact {person_id} has no photo on backend '{self.name}' (get_contact_photo shows whether a "
                "contact has one; bind_photo sets it)"
            )
        what = f"read the image of person {person_id}"
        async with self._download("BLOB", "GetPersonImage", [("PersonId", person_id)], what) as chunks:
            name = f"person-{person_id}{_extension(photo.mime_type)}"
            yield Download(
                name=name, mime_type=photo.mime_type, size=None, chunks=self._counted_download(chunks, name, None)
            )

    async def bind_photo(self, contact_id: str, upload: Upload) -> Photo:
        person_id = _require_int(contact_id, "contact_id")
        if not upload.mime_type.lower().startswith("image/"):
            raise InvalidInputError(
                f"only images can be contact photos, but {upload.name!r} is {upload.mime_type}; "
                "give a PNG, JPEG, GIF or WebP image"
            )
        self._check_upload(upload)
        await self._person_row(person_id)
        body = await self._streamed_write(
            "BLOB",
            "SaveImageStream",
            [
                ("Type", "PersonImage"),
                ("Image", self._payload_of(upload)),
                ("Description", upload.name),
            ],
            f"store the image {upload.name!r}",
        )
        blob_id = integer(body, "Response")
        if not blob_id:
            raise BackendError(f"SuperOffice stored no image for {upload.name!r} (blob id 0)")
        try:
            await self._call(
                "BLOB",
                "ChangePersonImage",
                [("PersonId", person_id), ("BlobId", blob_id)],
                what=f"set the image of person {person_id}",
                write=True,
            )
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                bound, state = await self._settle_failed_bind(person_id, blob_id)
            if bound:
                logger.info("person %s has image %s although ChangePersonImage reported a failure", person_id, blob_id)
                return Photo(photo_id=str(blob_id), mime_type=upload.mime_type, size=upload.size)
            if isinstance(exc, CrmError):
                kind = BackendError if isinstance(exc, _MaybeProcessed | _Expired) else type(exc)
                raise kind(f"{exc}; {state}") from None
            raise
        logger.info("person %s now has image %s", person_id, blob_id)
        return Photo(photo_id=str(blob_id), mime_type=upload.mime_type, size=upload.size)

    async def _settle_failed_bind(self, person_id: int, blob_id: int) -> tuple[bool, str]:
        """After ChangePersonImage failed: did it take effect anyway (a lost answer)? If not, delete
        the image SaveImageStream stored, so no unlinked copy is left behind. (True, "") when the
        person shows the new image; else (False, what state things are in)."""
        try:
            body = await self._call(
                "BLOB", "GetBlobEntityOnPerson", [("PersonId", person_id)], what=f"re-check the image of {person_id}"
            )
        except CrmError as exc:
            logger.warning("SuperOffice: could not re-check person %s after a failed bind: %s", person_id, exc)
            return False, (
                f"whether person {person_id} now shows image {blob_id} is unknown; call get_contact_photo to see, "
                "and bind_photo again if needed"
            )
        if integer(body, "Response", "BlobId") == blob_id:
            return True, ""
        if await self._quietly("BLOB", "DeleteBlobEntity", [("BlobEntityId", blob_id)]):
            return False, "the person's image is unchanged and the stored image was deleted again"
        return False, f"the person's image is unchanged (the unlinked image {blob_id} could not be deleted)"

    # ----------------------------------------------------------------------------------- find

    async def _archive(
        self, provider: str, columns: list[str], restrictions: list[tuple[str, str, str]], limit: int, what: str
    ) -> list[ET.Element]:
        """Rows of an archive provider matching all `restrictions` ((column, operator, value) each),
        sorted by the second column."""
        body = await self._call(
            "Archive",
            "GetArchiveListByColumns",
            [
                ("ProviderName", provider),
                ("Columns", _strings(columns)),
                ("SortOrder", [("ArchiveOrderByInfo", [("Name", columns[1]), ("Direction", "ASC")])]),
                (
                    "Restriction",
                    [
                        (
                            "ArchiveRestrictionInfo",
                            [
                                ("Name", name),
                                ("Operator", operator),
                                ("Values", _strings([value])),
                                ("IsActive", True),
                            ],
                        )
                        for name, operator, value in restrictions
                    ],
                ),
                ("Page", 0),
                ("PageSize", limit),
            ],
            what=what,
        )
        return children(child(body, "Response"), "ArchiveListItem")

    async def find_records(self, record_type: FindType, query: str, *, limit: int) -> list[Record]:
        words = " ".join(query.split())
        if not words:
            raise InvalidInputError("query is empty: give a name, a ticket number or words of a title")
        if limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {limit}")
        if record_type == "contact":
            rows = await self._archive(
                "FindPerson", ["personId", "fullName"], [("fullName", "contains", words)], limit, "find persons"
            )
            found = []
            for row in rows:
                person_id = integer(row, "PrimaryKey")
                name = _column(row, "fullName")
                if person_id:
                    found.append(Record(id=str(person_id), title=name or f"person {person_id}", record_type="contact"))
            return found[:limit]
        if record_type == "case":
            found = []
            number = words.lstrip("#")
            if number.isdigit() and 0 < int(number) < 2**31:
                body = await self._call(
                    "Ticket", "GetTicket", [("TicketId", int(number))], what=f"look up ticket {number}"
                )
                row = child(body, "Response")
                if row is not None and integer(row, "TicketId"):
                    found.append(_ticket_record(int(number), text(row, "Title") or ""))
            rows = await self._archive(
                "FindTicket", ["ticketId", "title"], [("title", "contains", words)], limit, "find tickets"
            )
            for row in rows:
                ticket_id = integer(row, "PrimaryKey")
                if ticket_id and all(record.id != str(ticket_id) for record in found):
                    found.append(_ticket_record(ticket_id, _column(row, "title") or ""))
            return found[:limit]
        raise UnsupportedError(f"SuperOffice backends find cases and contacts, not {record_type!r}")


# ---------------------------------------------------------------------------------- free functions


async def _read_head(
    reader: _soap.ResponseReader, chunks: AsyncIterator[bytes], payload: str | None, what: str, *, write: bool
) -> bool:
    """Feed the answer until its payload starts (or all of it when there is none); True when all was read."""
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if payload is None and received > _SMALL_LIMIT:
                raise BackendError(f"SuperOffice's answer to {what} is unexpectedly large")
            reader.feed(chunk)
            if payload is not None and (reader.payload_seen or reader.fault is not None):
                return False
        reader.finish()
    except ET.ParseError:
        # An answer cut off in the middle: a write's outcome is unknown.
        raise (_MaybeProcessed if write else BackendError)(
            f"SuperOffice's answer to {what} is not well-formed XML (cut off?)"
        ) from None
    except ValueError as exc:
        raise BackendError(f"SuperOffice's answer to {what} is broken: {exc}") from None
    except (httpx.TransportError, OSError) as exc:
        kind = _MaybeProcessed if write else BackendError
        raise kind(f"the connection to SuperOffice broke while trying to {what} ({type(exc).__name__})") from None
    return True


def _is_xml(response: httpx.Response) -> bool:
    kind = response.headers.get("content-type", "").lower()
    return "xml" in kind


async def _joined(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield head
    async for piece in rest:
        yield piece


async def _drained(reader: _soap.ResponseReader) -> AsyncIterator[bytes]:
    for piece in reader.take():
        yield piece


def _strings(values: list[str]) -> Strings:
    return Strings(tuple(values))


def _column(row: ET.Element, key: str) -> str | None:
    for pair in children(child(row, "ColumnData"), "ColumnDataKeyValuePair"):
        if text(pair, "Key") == key:
            return text(pair, "Value", "DisplayValue")
    return None


def _ticket_record(ticket_id: int, title: str) -> Record:
    return Record(id=str(ticket_id), title=f"#{ticket_id} · {title}", record_type="case")


def _extension(mime: str) -> str:
    return {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp"}.get(mime, "")


def _attachment_entry(item: ET.Element | None) -> FileEntry | None:
    if item is None or item.get(f"{{{_soap.XSI}}}nil") == "true":
        return None
    attachment_id = integer(item, "AttachmentId")
    if not attachment_id:
        return None
    name = text(item, "Name") or f"attachment-{attachment_id}"
    mime = (text(item, "ContentType") or "").split(";")[0].strip().lower()
    if "/" not in mime:
        mime = from_name(name) or OCTET_STREAM
    size = integer(item, "AttSize")
    return FileEntry(
        file_id=f"att-{attachment_id}",
        name=name,
        mime_type=mime,
        size=size if size is not None and size >= 0 else None,
    )


def _parse_file_id(file_id: str) -> tuple[str, int]:
    kind, dash, number = file_id.strip().partition("-")
    if not dash or kind not in ("att", "doc") or not number.isascii() or not number.isdigit():
        raise InvalidInputError(
            f"file_id {file_id!r} is not a valid id: SuperOffice file ids look like 'att-123' (a ticket "
            "attachment) or 'doc-45' (a document); copy it as list_case_files or upload_attachment returned it"
        )
    return kind, _require_int(number, "file_id")
