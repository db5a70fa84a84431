"""A strict, in-memory SuperOffice NetServer (SOAP 1.1, Services88) for tests: an ASGI app.

What it enforces, as the WSDLs define it (the schema below is written from the published WSDLs of
SoPrincipal, Ticket and BLOB; Person, Archive and Document from the operation pages of the docs —
the project never reads the WSDL files at test time):

- `POST /{tenant}/Remote/Services88/{Agent}.svc`, `Content-Type: text/xml` and a SOAP 1.1 envelope
  (a SOAP 1.2 envelope or content type is refused), `SOAPAction` = `{ns}/{Agent}/{Operation}`
  matching the body's element, headers only inside `<soap:Header>` (anything else directly in the
  Envelope is a fault, as the documentation's wrong examples would get).
- Headers `ApplicationToken` (checked when `application_token` is set: Online), `Credentials/Ticket`
  (a ticket from `AuthenticateUsernamePassword`/`AuthenticateWithAccessToken`), `TimeZone`.
- Request bodies are validated against the operation's schema: element order (xs:sequence), names,
  namespaces, and the simple types (int, boolean, base64Binary, enums).
- Errors as SuperOffice reports them: `ExceptionInfo` + `Succeeded=false` response headers with
  HTTP 200 (`error_style="header"`, default) or a SOAP 1.1 fault with HTTP 500 (`"fault"`).
- `base64Binary` payloads stream both ways: uploads are decoded while they arrive into files in a
  temporary folder, downloads are encoded from those files piece by piece (so a 30 MiB round trip
  costs this simulator little memory, which keeps memory measurements about the client honest).

Fault switches (`fail(operation, kind)`): "fault" (refused before processing), "fault-after"
(processed, then a fault), "header" (ExceptionInfo before processing), "drop" (half the answer,
then the connection is cut), "expire" (tickets expire just before the request). `expire_tickets()`
expires every ticket now. Every request is logged in `requests`.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from crm_mcp.backends import _demo
from tests.simulators._loopback import serve_on_loopback

__all__ = ["Fault", "Logged", "SuperOfficeSimulator", "contract_simulator", "serve"]

NS = "http://www.superoffice.net/ws/crm/NetServer/Services88"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
ARRAYS = "http://schemas.microsoft.com/2003/10/Serialization/Arrays"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
TENANT = "Cust12345"
COMPANY = 2
"""The company (contact) every seeded person belongs to."""
PATH = re.compile(r"^/(?P<tenant>[^/]+)/Remote/Services88/(?P<agent>[A-Za-z]+)\.svc$")

# ------------------------------------------------------------------------------------------ schema
# A type is a simple type name ("int", "string", "boolean", "base64Binary", "dateTime", "short",
# "unsignedInt", "any", an enum name in ENUMS) or a complex type name in TYPES. Every element is
# minOccurs=0, as in the WSDLs; a complex type's children must come in this order.

CARRIER = [("TableRight", "any"), ("FieldProperties", "any")]
_TICKET_FIELDS = (
    "TicketId:int Title:string CreatedAt:dateTime LastChanged:dateTime ReadByOwner:dateTime "
    "ReadByCustomer:dateTime FirstReadByUser:dateTime Activate:dateTime ClosedAt:dateTime "
    "RepliedAt:dateTime AlertTimeout:dateTime Deadline:dateTime CreatedBy:int CreatedByName:string "
    "Author:string OwnedBy:int OwnedByName:string Category:int CategoryName:string "
    "CategoryFullname:string Slevel:TicketSecurityLevel Priority:int PriorityName:string "
    "BaseStatus:any TicketStatus:int TicketStatusDisplayValue:string Origin:any CustId:int "
    "PersonFirstname:string PersonMiddleName:string PersonLastname:string PersonFullname:string "
    "AlertLevel:short ConnectId:int ReadStatus:any TimeToReply:int RealTimeToReply:int "
    "TimeToClose:int RealTimeToClose:int TimeSpentInternally:int TimeSpentExternally:int "
    "TimeSpentQueue:int RealTimeSpentInternally:int RealTimeSpentExternally:int "
    "RealTimeSpentQueue:int HasAttachment:boolean NumReplies:int NumMessages:int "
    "FromAddress:string ContactId:int ContactName:string OwnedByAssociateId:int"
)
"""The WSDL's `Ticket` type, in order (name:type)."""
ENUMS: dict[str, set[str]] = {
    "BlobLinkType": {
        "PersonImage",
        "ProjectImage",
        "EventImage",
        "Thumbnail",
        "StatusMonitorImage",
        "BatchTask",
        "ProductImage",
        "ProductThumbnail",
        "QuoteLineImage",
        "QuoteLineThumbnail",
        "AccessToken",
        "RefreshToken",
        "Dashboard",
        "DashboardTile",
        "ChatTopicImage",
        "FormsBackgroundImage",
        "ContactImage",
        "DashboardHtmlTileData",
    },
    "TicketSecurityLevel": {"Unknown", "Internal", "External"},
    "TicketMessageType": {"Unknown", "Plain", "Html"},
    "OrderBySortType": {"ASC", "DESC"},
}
TYPES: dict[str, list[tuple[str, str]]] = {
    "SoCredentials": [("Ticket", "string")],
    "SoTimeZone": [("SoTimeZoneId", "int"), ("SoTimeZoneLocationCode", "string")],
    "AttachmentEntity": [
        *CARRIER,
        ("AttachmentId", "int"),
        ("Name", "string"),
        ("ContentType", "string"),
        ("AttSize", "int"),
        ("InlineImage", "boolean"),
        ("ContentId", "string"),
    ],
    "Ticket": [
        *CARRIER,
        *[(item.split(":")[0], item.split(":")[1]) for item in _TICKET_FIELDS.split()],
    ],
    "TicketMessageEntity": [
        *CARRIER,
        ("EjMessageId", "int"),
        ("Ticket", "Ticket"),
        ("CreatedAt", "dateTime"),
        ("CreatedBy", "any"),
        ("Author", "string"),
        ("Slevel", "TicketSecurityLevel"),
        ("Type", "TicketMessageType"),
        ("MessageId", "string"),
        ("TimeSpent", "int"),
        ("Body", "string"),
        ("HtmlBody", "string"),
        ("EmailHeader", "string"),
        ("DebugInfo", "string"),
        ("MailSorter", "string"),
        ("MessageCategory", "any"),
        ("Person", "any"),
        ("SearchTitle", "string"),
        ("MessageHeaders", "any"),
        ("Important", "boolean"),
        ("ExtraFields", "any"),
        ("CustomFields", "any"),
    ],
    "Person": [
        *CARRIER,
        ("Position", "string"),
        ("PersonId", "int"),
        ("Mrmrs", "string"),
        ("Firstname", "string"),
        ("Lastname", "string"),
        ("MiddleName", "string"),
        ("Title", "string"),
        ("Description", "string"),
        ("Email", "string"),
        ("FullName", "string"),
        ("DirectPhone", "string"),
        ("FormalName", "string"),
        ("CountryId", "int"),
        ("ContactId", "int"),
        ("ContactName", "string"),
    ],
    "Contact": [*CARRIER, ("ContactId", "int"), ("Name", "string")],
    "DocumentTemplate": [*CARRIER, ("DocumentTemplateId", "int"), ("Name", "string")],
    "DocumentEntity": [
        *CARRIER,
        ("DocumentId", "int"),
        ("UpdatedBy", "any"),
        ("CreatedBy", "any"),
        ("Attention", "string"),
        ("Header", "string"),
        ("Name", "string"),
        ("OurRef", "string"),
        ("YourRef", "string"),
        ("CreatedDate", "dateTime"),
        ("UpdatedDate", "dateTime"),
        ("Description", "string"),
        ("DocumentTemplate", "DocumentTemplate"),
        ("Person", "Person"),
        ("Associate", "any"),
        ("Contact", "Contact"),
        ("Project", "any"),
        ("Date", "dateTime"),
        ("ExternalRef", "string"),
        ("Completed", "any"),
        ("ActiveLinks", "int"),
        ("Type", "any"),
        ("Links", "any"),
        ("LockSemantics", "any"),
        ("Sale", "any"),
        ("SuggestedDocumentId", "int"),
        ("Snum", "int"),
        ("UserDefinedFields", "any"),
        ("ExtraFields", "any"),
        ("CustomFields", "any"),
        ("PublishEventDate", "dateTime"),
        ("PublishTo", "dateTime"),
        ("PublishFrom", "dateTime"),
        ("IsPublished", "boolean"),
        ("VisibleFor", "any"),
    ],
    "ArrayOfint": [("int*", "int")],
    "ArrayOfstring": [("string*", "string")],
    "ArrayOfArchiveOrderByInfo": [("ArchiveOrderByInfo*", "ArchiveOrderByInfo")],
    "ArchiveOrderByInfo": [("Name", "string"), ("Direction", "OrderBySortType")],
    "ArrayOfArchiveRestrictionInfo": [("ArchiveRestrictionInfo*", "ArchiveRestrictionInfo")],
    "ArchiveRestrictionInfo": [
        ("Name", "string"),
        ("Operator", "string"),
        ("Values", "ArrayOfstring"),
        ("DisplayValues", "ArrayOfstring"),
        ("ColumnInfo", "any"),
        ("IsActive", "boolean"),
        ("SubRestrictions", "ArrayOfArchiveRestrictionInfo"),
        ("InterParenthesis", "int"),
        ("InterOperator", "any"),
        ("UniqueHash", "int"),
    ],
}
ARRAY_TYPES = {"ArrayOfint", "ArrayOfstring"}
"""Types whose items live in the Microsoft Serialization/Arrays namespace."""

OPERATIONS: dict[tuple[str, str], list[tuple[str, str]]] = {
    ("SoPrincipal", "AuthenticateUsernamePassword"): [("UserName", "string"), ("Password", "string")],
    ("SoPrincipal", "AuthenticateWithAccessToken"): [("AccessToken", "string")],
    ("Ticket", "GetTicket"): [("TicketId", "int")],
    ("Ticket", "GetTicketAttachments"): [("TicketEntityId", "int")],
    ("Ticket", "GetAttachmentEntity"): [("AttachmentEntityId", "int")],
    ("Ticket", "GetAttachmentStream"): [("AttachmentId", "int")],
    ("Ticket", "SaveAttachmentEntity"): [("AttachmentEntity", "AttachmentEntity")],
    ("Ticket", "UploadAttachment"): [("AttachmentId", "int"), ("Content", "base64Binary")],
    ("Ticket", "SaveTicketMessageEntity"): [("TicketMessageEntity", "TicketMessageEntity")],
    ("Ticket", "DeleteTicketMessageEntity"): [("TicketMessageEntityId", "int")],
    ("Ticket", "AddAttachments"): [("TicketMessageEntityId", "int"), ("AttachmentIds", "ArrayOfint")],
    ("BLOB", "GetPersonImage"): [("PersonId", "int")],
    ("BLOB", "GetBlobEntityOnPerson"): [("PersonId", "int")],
    ("BLOB", "SaveImageStream"): [("Type", "BlobLinkType"), ("Image", "base64Binary"), ("Description", "string")],
    ("BLOB", "ChangePersonImage"): [("PersonId", "int"), ("BlobId", "int")],
    ("BLOB", "DeleteBlobEntity"): [("BlobEntityId", "int")],
    ("Person", "GetPerson"): [("PersonId", "int")],
    ("Archive", "GetArchiveListByColumns"): [
        ("ProviderName", "string"),
        ("Columns", "ArrayOfstring"),
        ("SortOrder", "ArrayOfArchiveOrderByInfo"),
        ("Restriction", "ArrayOfArchiveRestrictionInfo"),
        ("Entities", "ArrayOfstring"),
        ("Page", "int"),
        ("PageSize", "int"),
    ],
    ("Document", "SaveDocumentEntity"): [("DocumentEntity", "DocumentEntity")],
    ("Document", "GetDocumentEntity"): [("DocumentEntityId", "int")],
    ("Document", "SetDocumentStream"): [
        ("DocumentEntity", "DocumentEntity"),
        ("Stream", "base64Binary"),
        ("Force", "boolean"),
    ],
    ("Document", "GetDocumentStream"): [("DocumentId", "int")],
    ("Document", "DeleteDocumentEntity"): [("DocumentEntityId", "int")],
}
AGENTS = {agent for agent, _ in OPERATIONS}
TYPES.update({f"op:{agent}.{operation}": spec for (agent, operation), spec in OPERATIONS.items()})
HEADERS: dict[str, str] = {"ApplicationToken": "string", "Credentials": "SoCredentials", "TimeZone": "SoTimeZone"}
BINARY = {"Content", "Image", "Stream"}


class SoapFault(Exception):
    """A refusal: reported as ExceptionInfo (or a fault, per `error_style`)."""

    def __init__(self, message: str, kind: str = "SoException", *, friendly: str = "", protocol: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.friendly = friendly
        self.protocol = protocol
        """Protocol errors (envelope, action, schema) are always SOAP faults, as WCF sends them."""


@dataclass
class Fault:
    """Make matching calls fail (see the module docstring for `kind`)."""

    operation: str
    kind: Literal["fault", "fault-after", "header", "drop", "expire"]
    times: int = 1


@dataclass
class Logged:
    agent: str
    operation: str
    headers: dict[str, str]
    body: bytes = b""
    """The request as received (binary payloads elided to keep memory low)."""
    chunks: int = 0
    status: int = 0
    processed: bool = False


# --------------------------------------------------------------------------------- request parsing


class _RequestTarget:
    """Expat target: a tree of the envelope, except the text of base64Binary elements, which is
    decoded (4-character-aligned) into a file as it arrives."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.builder = ET.TreeBuilder()
        self.depth = 0
        self.path: list[str] = []
        self.sink: Any = None
        self.sink_path: Path | None = None
        self.pending = ""
        self.size = 0
        self.files: list[Path] = []

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        self.path.append(tag)
        if self.sink is not None:
            raise SoapFault(f"element {tag} is not allowed inside base64Binary", protocol=True)
        element_attrs = dict(attrs)
        if len(self.path) == 4 and self.path[1] == f"{{{SOAP11}}}Body" and tag.rpartition("}")[2] in BINARY:
            self.sink_path = self.folder / f"in-{secrets.token_hex(8)}"
            self.files.append(self.sink_path)
            self.sink = self.sink_path.open("wb")
            self.size = 0
            element_attrs["sim-file"] = str(self.sink_path)
        self.builder.start(tag, element_attrs)

    def end(self, tag: str) -> None:
        self.path.pop()
        if self.sink is not None and len(self.path) == 3:
            self._flush(final=True)
            self.sink.close()
            self.sink = None
            element = self.builder.end(tag)
            element.set("sim-size", str(self.size))
            return
        self.builder.end(tag)

    def data(self, text: str) -> None:
        if self.sink is not None:
            self.pending += "".join(text.split())
            if len(self.pending) >= 65536:
                self._flush(final=False)
        else:
            self.builder.data(text)

    def _flush(self, *, final: bool) -> None:
        cut = len(self.pending) if final else len(self.pending) - len(self.pending) % 4
        piece, self.pending = self.pending[:cut], self.pending[cut:]
        if piece:
            try:
                data = base64.b64decode(piece, validate=True)
            except binascii.Error:
                raise SoapFault("The value is not valid base64Binary.", protocol=True) from None
            self.sink.write(data)
            self.size += len(data)

    def close(self) -> ET.Element:
        return self.builder.close()

    def abort(self) -> None:
        if self.sink is not None:
            self.sink.close()
        for path in self.files:
            path.unlink(missing_ok=True)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _ns(tag: str) -> str:
    return tag[1:].partition("}")[0] if tag.startswith("{") else ""


def _validate(element: ET.Element, kind: str, where: str) -> None:
    """Check `element`'s content against `kind` (children in order, names, namespaces, simple values)."""
    if element.get(f"{{{XSI}}}nil") == "true":
        if len(element) or (element.text or "").strip():
            raise SoapFault(f"{where}: a nil element must be empty", protocol=True)
        return
    if kind == "any":
        return
    if kind in TYPES:
        if (element.text or "").strip():
            raise SoapFault(f"{where}: unexpected text in a complex element", protocol=True)
        spec = TYPES[kind]
        item_ns = ARRAYS if kind in ARRAY_TYPES else NS
        position = 0
        for item in element:
            name, item_namespace = _local(item.tag), _ns(item.tag)
            if item_namespace != item_ns:
                raise SoapFault(
                    f"{where}: element {name!r} is in namespace {item_namespace!r}, expected {item_ns!r}",
                    protocol=True,
                )
            while position < len(spec) and spec[position][0].rstrip("*") != name:
                position += 1
            if position == len(spec):
                raise SoapFault(
                    f"{where}: element {name!r} is not expected here (unknown, or out of the xs:sequence order "
                    f"of {kind})",
                    protocol=True,
                )
            child_name, child_kind = spec[position]
            _validate(item, child_kind, f"{where}/{name}")
            if not child_name.endswith("*"):
                position += 1
        return
    if len(element):
        raise SoapFault(f"{where}: {kind} must not contain elements", protocol=True)
    value = (element.text or "").strip()
    if kind in ("int", "short", "unsignedInt"):
        if not re.fullmatch(r"[+-]?\d+", value):
            raise SoapFault(f"{where}: {value!r} is not a valid xs:{kind}", protocol=True)
    elif kind == "boolean":
        if value not in ("true", "false", "1", "0"):
            raise SoapFault(f"{where}: {value!r} is not a valid xs:boolean", protocol=True)
    elif kind in ENUMS and value not in ENUMS[kind]:
        raise SoapFault(f"{where}: {value!r} is not a valid {kind}", protocol=True)


# ---------------------------------------------------------------------------------- serialization

Value = Any


def _xml(name: str, value: Value, prefix: str = "tns") -> str:
    tag = f"{prefix}:{name}" if prefix else name
    if value is None:
        return f'<{tag} i:nil="true"/>'
    if isinstance(value, bool):
        return f"<{tag}>{'true' if value else 'false'}</{tag}>"
    if isinstance(value, list):
        return f"<{tag}>{''.join(_xml(n, v) for n, v in value)}</{tag}>"
    return f"<{tag}>{escape(str(value))}</{tag}>"


def _envelope(body: str, headers: str = "") -> str:
    return (
        f'<s:Envelope xmlns:s="{SOAP11}" xmlns:tns="{NS}" xmlns:i="{XSI}"><s:Header>{headers}</s:Header>'
        f"<s:Body>{body}</s:Body></s:Envelope>"
    )


def _ok_headers() -> str:
    return "<tns:Succeeded>true</tns:Succeeded>"


def _xml_response(text: str, status: int = 200) -> Response:
    return Response(text.encode("utf-8"), status_code=status, media_type="text/xml; charset=utf-8")


# ------------------------------------------------------------------------------------------- state


@dataclass
class _Attachment:
    name: str
    content_type: str
    size: int = 0
    path: Path | None = None


@dataclass
class _Message:
    ticket: int
    body: str
    slevel: str
    author: str
    attachments: list[int] = field(default_factory=list)


@dataclass
class _Person:
    first: str
    last: str
    image: int = 0
    contact: int = COMPANY

    @property
    def full(self) -> str:
        return f"{self.first} {self.last}".strip()


@dataclass
class _Blob:
    path: Path
    size: int
    mime: str
    description: str


@dataclass
class _Document:
    header: str
    name: str
    person: int
    path: Path | None = None
    our_ref: str = ""


@dataclass
class SuperOfficeSimulator:
    username: str = "SAL0"
    password: str = "Wilson-Pass!1"
    access_token: str = "8A:access-token-example"
    application_token: str | None = None
    """Set: an Online tenant, where every call must carry this ApplicationToken."""
    tenant: str = TENANT
    error_style: Literal["header", "fault"] = "header"
    expiry_style: Literal["header", "fault"] = "fault"
    tickets: dict[str, int] = field(default_factory=dict)
    """Issued credentials tickets → associate id."""
    persons: dict[int, _Person] = field(default_factory=dict)
    service_tickets: dict[int, str] = field(default_factory=dict)
    """Ticket (request) id → title."""
    messages: dict[int, _Message] = field(default_factory=dict)
    attachments: dict[int, _Attachment] = field(default_factory=dict)
    blobs: dict[int, _Blob] = field(default_factory=dict)
    documents: dict[int, _Document] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    requests: list[Logged] = field(default_factory=list)
    logins: int = 0
    _next: int = 5000

    def __post_init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="superoffice-sim-")
        self.folder = Path(self._folder.name)

    # ----------------------------------------------------------------------------- test API

    def fail(self, operation: str, kind: Any, *, times: int = 1) -> Fault:
        fault = Fault(operation, kind, times)
        self.faults.append(fault)
        return fault

    def expire_tickets(self) -> None:
        self.tickets.clear()

    def calls(self, operation: str | None = None) -> list[Logged]:
        return [entry for entry in self.requests if operation is None or entry.operation == operation]

    def new_id(self) -> int:
        self._next += 1
        return self._next

    def store(self, data: bytes) -> Path:
        path = self.folder / f"seed-{secrets.token_hex(8)}"
        path.write_bytes(data)
        return path

    def add_person(self, first: str, last: str, *, person_id: int | None = None, image: bytes | None = None) -> int:
        person_id = person_id or self.new_id()
        person = _Person(first, last)
        if image is not None:
            blob_id = self.new_id()
            self.blobs[blob_id] = _Blob(self.store(image), len(image), "image/png", f"{first} {last}")
            person.image = blob_id
        self.persons[person_id] = person
        return person_id

    def add_ticket(self, title: str, *, ticket_id: int | None = None) -> int:
        ticket_id = ticket_id or self.new_id()
        self.service_tickets[ticket_id] = title
        return ticket_id

    def add_message(self, ticket_id: int, body: str, files: dict[str, tuple[str, bytes]] | None = None) -> int:
        message_id = self.new_id()
        message = _Message(ticket_id, body, "External", "customer@example.com")
        for name, (mime, data) in (files or {}).items():
            attachment_id = self.new_id()
            self.attachments[attachment_id] = _Attachment(name, mime, len(data), self.store(data))
            message.attachments.append(attachment_id)
        self.messages[message_id] = message
        return message_id

    def ticket_attachments(self, ticket_id: int) -> list[int]:
        return [
            attachment
            for message_id in sorted(self.messages)
            if self.messages[message_id].ticket == ticket_id
            for attachment in self.messages[message_id].attachments
        ]

    # --------------------------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # pragma: no cover -- uvicorn runs with lifespan="off"
            return
        request = Request(scope, receive)
        match = PATH.match(request.url.path)
        logged = Logged(agent="", operation="", headers={k.lower(): v for k, v in request.headers.items()})
        self.requests.append(logged)
        response = await self._handle(request, match, logged)
        logged.status = response.status_code
        if getattr(response, "drop", False):
            await _send_then_drop(response, send)
            return
        await response(scope, receive, send)

    async def _handle(self, request: Request, match: re.Match[str] | None, logged: Logged) -> Response:
        if match is None or match["tenant"] != self.tenant or match["agent"] not in AGENTS:
            await _drain(request)
            return Response("<html><body>404 - File or directory not found.</body></html>", 404, media_type="text/html")
        agent = match["agent"]
        logged.agent = agent
        if request.method != "POST":
            return Response("Method not allowed", 405)
        target = _RequestTarget(self.folder)
        try:
            envelope = await self._read(request, target, logged)
            operation, body, headers = self._unwrap(agent, envelope, request, logged)
            fault = next((f for f in self.faults if f.times > 0 and f.operation == operation), None)
            if fault is not None:
                fault.times -= 1
                if fault.kind == "expire":
                    self.expire_tickets()
                elif fault.kind == "fault":
                    raise SoapFault("Simulated failure: Timeout expired.", "SqlException", protocol=True)
                elif fault.kind == "header":
                    raise SoapFault("Simulated failure: Timeout expired.", "SqlException", friendly="Try again later")
            self._authorize(agent, operation, headers)
            response = await self._dispatch(agent, operation, body)
            logged.processed = True
            if fault is not None and fault.kind == "fault-after":
                raise SoapFault("Simulated failure after processing.", "SqlException", protocol=True)
            if fault is not None and fault.kind == "drop":
                response.drop = True  # type: ignore[attr-defined]
            return response
        except SoapFault as exc:
            target.abort()
            return self._refuse(exc, logged.operation)
        except ClientDisconnect:
            target.abort()
            return Response(status_code=400)

    async def _read(self, request: Request, target: _RequestTarget, logged: Logged) -> ET.Element:
        content_type = request.headers.get("content-type", "").lower()
        if content_type.startswith("application/soap+xml"):
            await _drain(request)
            raise SoapFault(
                "Cannot process the message because the content type 'application/soap+xml' was not the expected "
                "type 'text/xml; charset=utf-8' (this binding is SOAP 1.1).",
                "ProtocolException",
                protocol=True,
            )
        if not content_type.startswith("text/xml"):
            await _drain(request)
            raise SoapFault(f"Unsupported content type {content_type!r}.", "ProtocolException", protocol=True)
        parser = ET.XMLParser(target=target)
        kept = bytearray()
        try:
            async for chunk in request.stream():
                logged.chunks += 1
                if len(kept) < 64 * 1024:
                    kept += chunk[: 64 * 1024 - len(kept)]
                parser.feed(chunk)
            envelope = parser.close()
        except ET.ParseError as exc:
            raise SoapFault(f"The request is not well-formed XML ({exc}).", "XmlException", protocol=True) from None
        logged.body = bytes(kept)
        return envelope

    def _unwrap(
        self, agent: str, envelope: ET.Element, request: Request, logged: Logged
    ) -> tuple[str, ET.Element, dict[str, ET.Element]]:
        if envelope.tag == f"{{{SOAP12}}}Envelope":
            raise SoapFault("A SOAP 1.2 envelope was sent to a SOAP 1.1 endpoint.", "ProtocolException", protocol=True)
        if envelope.tag != f"{{{SOAP11}}}Envelope":
            raise SoapFault("The message is not a SOAP 1.1 envelope.", "ProtocolException", protocol=True)
        header = body = None
        for item in envelope:
            if item.tag == f"{{{SOAP11}}}Header" and header is None and body is None:
                header = item
            elif item.tag == f"{{{SOAP11}}}Body" and body is None:
                body = item
            else:
                raise SoapFault(
                    f"Element {item.tag} is not allowed directly in the Envelope: SOAP headers belong inside "
                    "<soap:Header>.",
                    "ProtocolException",
                    protocol=True,
                )
        if body is None or len(body) != 1:
            raise SoapFault("The Body must hold exactly one operation element.", "ProtocolException", protocol=True)
        element = body[0]
        operation = _local(element.tag)
        logged.operation = operation
        action = request.headers.get("soapaction", "").strip().strip('"')
        if action != f"{NS}/{agent}/{operation}":
            raise SoapFault(
                f"The message with Action '{action}' cannot be processed at the receiver, due to a ContractFilter "
                "mismatch at the EndpointDispatcher.",
                "ActionNotSupported",
                protocol=True,
            )
        if _ns(element.tag) != NS or (agent, operation) not in OPERATIONS:
            raise SoapFault(f"Operation {element.tag} is not part of {agent}.", "ActionNotSupported", protocol=True)
        _validate(element, f"op:{agent}.{operation}", operation)
        headers: dict[str, ET.Element] = {}
        for item in header if header is not None else []:
            name = _local(item.tag)
            if _ns(item.tag) != NS or name not in HEADERS:
                if item.get(f"{{{SOAP11}}}mustUnderstand") in ("1", "true"):
                    raise SoapFault(f"Header {item.tag} was not understood.", "MustUnderstand", protocol=True)
                continue
            _validate(item, HEADERS[name], f"Header/{name}")
            headers[name] = item
        return operation, element, headers

    def _authorize(self, agent: str, operation: str, headers: dict[str, ET.Element]) -> None:
        if self.application_token is not None:
            token = headers.get("ApplicationToken")
            if token is None or (token.text or "").strip() != self.application_token:
                raise SoapFault(
                    "Application token is missing or not valid for this tenant.",
                    "SoApplicationTokenException",
                    friendly="The application is not allowed to call this installation.",
                )
        if agent == "SoPrincipal":
            return
        credentials = headers.get("Credentials")
        ticket = next((item.text or "" for item in credentials or [] if _local(item.tag) == "Ticket"), "")
        if ticket.strip() not in self.tickets:
            raise SoapFault(
                "The ticket is expired or invalid. Please authenticate again.",
                "SuperOffice.Exceptions.SoTicketExpiredException",
                friendly="Your session has expired",
                protocol=self.expiry_style == "fault",
            )

    def _refuse(self, exc: SoapFault, operation: str) -> Response:
        if exc.protocol or self.error_style == "fault":
            detail = (
                f"<detail><tns:SoExceptionInfo><tns:Message>{escape(exc.message)}</tns:Message>"
                f"<tns:FriendlyText>{escape(exc.friendly)}</tns:FriendlyText>"
                f"<tns:ExceptionType>{escape(exc.kind)}</tns:ExceptionType></tns:SoExceptionInfo></detail>"
            )
            body = (
                f'<s:Fault><faultcode>s:Client</faultcode><faultstring xml:lang="en-US">{escape(exc.message)}'
                f"</faultstring>{detail}</s:Fault>"
            )
            return _xml_response(_envelope(body), 500)
        info = (
            f"<tns:ExceptionInfo><tns:Message>{escape(exc.message)}</tns:Message><tns:StackTrace>   at "
            f"SuperOffice.{escape(operation or 'Agent')}()</tns:StackTrace><tns:FriendlyText>{escape(exc.friendly)}"
            f"</tns:FriendlyText><tns:ExceptionType>{escape(exc.kind)}</tns:ExceptionType>"
            '<tns:Source>SoDataBase</tns:Source><tns:InnerException i:nil="true"/>'
            '<tns:Parameters i:nil="true"/></tns:ExceptionInfo><tns:Succeeded>false</tns:Succeeded>'
        )
        return _xml_response(_envelope(f"<tns:{operation or 'Unknown'}Response/>", info))

    # ------------------------------------------------------------------------------- dispatch

    async def _dispatch(self, agent: str, operation: str, element: ET.Element) -> Response:
        args = {_local(item.tag): item for item in element}
        handler = getattr(self, f"_op_{operation}")
        result = handler(args)
        if isinstance(result, Response):
            return result
        return self._answer(operation, result)

    def _answer(self, operation: str, fields: list[tuple[str, Value]] | None) -> Response:
        response_name = "AuthenticateResponse" if operation.startswith("Authenticate") else f"{operation}Response"
        inner = "".join(_xml(name, value) for name, value in fields or [])
        return _xml_response(_envelope(f"<tns:{response_name}>{inner}</tns:{response_name}>", _ok_headers()))

    def _stream(self, operation: str, path: Path | None) -> Response:
        """A `Response` base64Binary streamed from a file (empty element when there is none)."""
        prefix = (
            f'<s:Envelope xmlns:s="{SOAP11}" xmlns:tns="{NS}" xmlns:i="{XSI}"><s:Header>{_ok_headers()}'
            f"</s:Header><s:Body><tns:{operation}Response><tns:Response>"
        ).encode()
        suffix = f"</tns:Response></tns:{operation}Response></s:Body></s:Envelope>".encode()

        async def body() -> AsyncIterator[bytes]:
            yield prefix
            if path is not None:
                with path.open("rb") as source:
                    while piece := source.read(3 * 16384):
                        yield base64.b64encode(piece)
            yield suffix

        return StreamingResponse(body(), media_type="text/xml; charset=utf-8")

    # SoPrincipal

    def _authenticated(self, ok: bool) -> list[tuple[str, Value]]:
        if not ok:
            return [("Response", None), ("Credentials", None), ("AuthenticationSucceeded", False)]
        ticket = f"7T:{secrets.token_urlsafe(24)}"
        self.tickets[ticket] = 1
        return [
            ("Response", [("AssociateId", 1), ("PersonId", 1), ("ContactId", 1)]),
            ("Credentials", [("Ticket", ticket)]),
            ("AuthenticationSucceeded", True),
        ]

    def _op_AuthenticateUsernamePassword(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        self.logins += 1
        return self._authenticated(_str(args, "UserName") == self.username and _str(args, "Password") == self.password)

    def _op_AuthenticateWithAccessToken(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        self.logins += 1
        return self._authenticated(_str(args, "AccessToken") == self.access_token)

    # Ticket

    def _ticket_value(self, ticket_id: int) -> Value:
        title = self.service_tickets.get(ticket_id)
        if title is None:
            return None
        return [
            ("TicketId", ticket_id),
            ("Title", title),
            ("NumMessages", sum(1 for message in self.messages.values() if message.ticket == ticket_id)),
        ]

    def _op_GetTicket(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        return [("Response", self._ticket_value(_int(args, "TicketId")))]

    def _attachment_value(self, attachment_id: int) -> Value:
        item = self.attachments.get(attachment_id)
        if item is None:
            return None
        return [
            ("AttachmentId", attachment_id),
            ("Name", item.name),
            ("ContentType", item.content_type),
            ("AttSize", item.size),
            ("InlineImage", False),
            ("ContentId", ""),
        ]

    def _op_GetTicketAttachments(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        # Like SuperOffice: an unknown ticket id is simply an empty list.
        ids = self.ticket_attachments(_int(args, "TicketEntityId"))
        return [("Response", [("AttachmentEntity", self._attachment_value(item)) for item in ids])]

    def _op_GetAttachmentEntity(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        return [("Response", self._attachment_value(_int(args, "AttachmentEntityId")))]

    def _op_GetAttachmentStream(self, args: dict[str, ET.Element]) -> Response:
        item = self.attachments.get(_int(args, "AttachmentId"))
        if item is None:
            raise SoapFault("Attachment not found", "SoNotFoundException")
        return self._stream("GetAttachmentStream", item.path)

    def _op_SaveAttachmentEntity(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        entity = {_local(item.tag): item for item in args.get("AttachmentEntity", [])}
        attachment_id = _int(entity, "AttachmentId")
        if attachment_id == 0:
            attachment_id = self.new_id()
            self.attachments[attachment_id] = _Attachment(_str(entity, "Name"), _str(entity, "ContentType"))
        elif attachment_id not in self.attachments:
            raise SoapFault(f"Attachment {attachment_id} not found", "SoNotFoundException")
        else:
            self.attachments[attachment_id].name = _str(entity, "Name")
        return [("Response", self._attachment_value(attachment_id))]

    def _op_UploadAttachment(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        item = self.attachments.get(_int(args, "AttachmentId"))
        if item is None:
            raise SoapFault("Attachment not found", "SoNotFoundException")
        content = args.get("Content")
        if content is None:
            raise SoapFault("Content is required", "ArgumentNullException")
        item.path = Path(content.get("sim-file", ""))
        item.size = int(content.get("sim-size", "0"))
        return []

    def _op_SaveTicketMessageEntity(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        entity = {_local(item.tag): item for item in args.get("TicketMessageEntity", [])}
        if _int(entity, "EjMessageId") != 0:
            raise SoapFault("This simulator only creates messages", "NotSupportedException")
        ticket = {_local(item.tag): item for item in entity.get("Ticket", [])}
        ticket_id = _int(ticket, "TicketId")
        if ticket_id not in self.service_tickets:
            raise SoapFault(f"Ticket {ticket_id} does not exist", "SoNotFoundException", friendly="Unknown request")
        message_id = self.new_id()
        self.messages[message_id] = _Message(
            ticket_id, _str(entity, "Body"), _str(entity, "Slevel") or "Unknown", _str(entity, "Author")
        )
        return [
            (
                "Response",
                [
                    ("EjMessageId", message_id),
                    ("Ticket", self._ticket_value(ticket_id)),
                    ("Author", _str(entity, "Author")),
                    ("Slevel", self.messages[message_id].slevel),
                    ("Body", _str(entity, "Body")),
                ],
            )
        ]

    def _op_DeleteTicketMessageEntity(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        self.messages.pop(_int(args, "TicketMessageEntityId"), None)
        return []

    def _op_AddAttachments(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        message = self.messages.get(_int(args, "TicketMessageEntityId"))
        if message is None:
            raise SoapFault("Message not found", "SoNotFoundException")
        for item in args.get("AttachmentIds", []):
            attachment_id = int((item.text or "0").strip())
            if attachment_id not in self.attachments:
                raise SoapFault(f"Attachment {attachment_id} not found", "SoNotFoundException")
            message.attachments.append(attachment_id)
        return []

    # BLOB and Person

    def _op_GetPerson(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        person_id = _int(args, "PersonId")
        person = self.persons.get(person_id)
        if person is None:
            return [("Response", None)]
        return [
            (
                "Response",
                [
                    ("PersonId", person_id),
                    ("Firstname", person.first),
                    ("Lastname", person.last),
                    ("FullName", person.full),
                    ("ContactId", person.contact),
                ],
            )
        ]

    def _op_GetPersonImage(self, args: dict[str, ET.Element]) -> Response:
        # Like SuperOffice: no image (or no such person) is an empty answer, not an error.
        person = self.persons.get(_int(args, "PersonId"))
        blob = self.blobs.get(person.image) if person is not None else None
        return self._stream("GetPersonImage", blob.path if blob is not None else None)

    def _op_GetBlobEntityOnPerson(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        person = self.persons.get(_int(args, "PersonId"))
        blob = self.blobs.get(person.image) if person is not None else None
        if person is None or blob is None:
            return [("Response", None)]
        return [
            (
                "Response",
                [
                    ("BlobId", person.image),
                    ("BlobSize", blob.size),
                    ("Description", blob.description),
                    ("MimeType", blob.mime),
                ],
            )
        ]

    def _op_SaveImageStream(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        image = args.get("Image")
        if image is None or int(image.get("sim-size", "0")) == 0:
            raise SoapFault("Image is empty", "ArgumentException")
        path = Path(image.get("sim-file", ""))
        head = path.open("rb").read(16)
        mime = _image_mime(head)
        if mime is None:
            raise SoapFault("The stream is not an image", "ArgumentException", friendly="Not a valid image")
        blob_id = self.new_id()
        self.blobs[blob_id] = _Blob(path, int(image.get("sim-size", "0")), mime, _str(args, "Description"))
        return [("Response", blob_id)]

    def _op_ChangePersonImage(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        person = self.persons.get(_int(args, "PersonId"))
        blob_id = _int(args, "BlobId")
        if person is None:
            raise SoapFault("Person not found", "SoNotFoundException")
        if blob_id != 0 and blob_id not in self.blobs:
            raise SoapFault(f"Blob {blob_id} not found", "SoNotFoundException")
        person.image = blob_id
        return []

    def _op_DeleteBlobEntity(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        # The blob goes; a person still linked to it is left pointing at nothing (a half-bound photo
        # that the tests look for), as nothing in the API documents a cascade.
        blob = self.blobs.pop(_int(args, "BlobEntityId"), None)
        if blob is None:
            raise SoapFault(f"Blob {_int(args, 'BlobEntityId')} not found", "SoNotFoundException")
        return []

    # Archive

    def _op_GetArchiveListByColumns(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        provider = _str(args, "ProviderName")
        columns = [item.text or "" for item in args.get("Columns", [])]
        restrictions = list(args.get("Restriction", []))
        rows: list[tuple[int, dict[str, str]]]
        if provider.lower() == "findperson":
            rows = [
                (pid, {"personId": str(pid), "fullName": p.full, "firstName": p.first, "lastName": p.last})
                for pid, p in sorted(self.persons.items())
            ]
            entity = "person"
        elif provider.lower() == "findticket":
            rows = [(tid, {"ticketId": str(tid), "title": t}) for tid, t in sorted(self.service_tickets.items())]
            entity = "ticket"
        elif provider.lower() == "document":
            rows = [
                (did, {"documentId": str(did), "ourref": d.our_ref, "name": d.name, "personId": str(d.person)})
                for did, d in sorted(self.documents.items())
            ]
            entity = "document"
        elif provider.lower() == "ticketmessage":
            rows = [
                (
                    mid,
                    {"id": str(mid), "ticketId": str(m.ticket), "author": m.author, "body": m.body, "slevel": m.slevel},
                )
                for mid, m in sorted(self.messages.items())
            ]
            entity = "ticketmessage"
        else:
            raise SoapFault(f"Unknown archive provider '{provider}'", "ArgumentException")
        for restriction in restrictions:
            info = {_local(item.tag): item for item in restriction}
            name, operator = _str(info, "Name"), _str(info, "Operator").lower()
            values = [(item.text or "").casefold() for item in info.get("Values", [])]
            if rows and name not in rows[0][1]:
                raise SoapFault(f"Unknown restriction column '{name}'", "ArgumentException")
            if operator not in ("contains", "begins", "=", "equals"):
                raise SoapFault(f"Unknown operator '{operator}'", "ArgumentException")

            def keep(
                row: dict[str, str], name: str = name, operator: str = operator, values: list[str] = values
            ) -> bool:
                cell = row.get(name, "").casefold()
                if operator == "contains":
                    return any(value in cell for value in values)
                if operator == "begins":
                    return any(cell.startswith(value) for value in values)
                return cell in values

            rows = [(key, row) for key, row in rows if keep(row)]
        page, size = _int(args, "Page"), _int(args, "PageSize") or 50
        rows = rows[page * size : (page + 1) * size]
        return [
            (
                "Response",
                [
                    (
                        "ArchiveListItem",
                        [
                            ("EntityName", entity),
                            ("PrimaryKey", key),
                            (
                                "ColumnData",
                                [
                                    (
                                        "ColumnDataKeyValuePair",
                                        [("Key", column), ("Value", [("DisplayValue", row.get(column, ""))])],
                                    )
                                    for column in columns
                                ],
                            ),
                        ],
                    )
                    for key, row in rows
                ],
            )
        ]

    # Document

    def _document_value(self, document_id: int) -> Value:
        document = self.documents.get(document_id)
        if document is None:
            return None
        return [
            ("DocumentId", document_id),
            ("Header", document.header),
            ("Name", document.name),
            ("Person", [("PersonId", document.person)]),
        ]

    def _op_SaveDocumentEntity(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        entity = {_local(item.tag): item for item in args.get("DocumentEntity", [])}
        person = {_local(item.tag): item for item in entity.get("Person", [])}
        person_id = _int(person, "PersonId")
        if person_id not in self.persons:
            raise SoapFault(f"Person {person_id} not found", "SoNotFoundException")
        contact = {_local(item.tag): item for item in entity.get("Contact", [])}
        if contact and _int(contact, "ContactId") != self.persons[person_id].contact:
            raise SoapFault(
                "The document's person must be a contact person registered on the document's company.",
                "SoValidationException",
            )
        if _int(entity, "DocumentId") != 0:
            raise SoapFault("This simulator only creates documents", "NotSupportedException")
        document_id = self.new_id()
        self.documents[document_id] = _Document(
            _str(entity, "Header"), _str(entity, "Name"), person_id, our_ref=_str(entity, "OurRef")
        )
        return [("Response", self._document_value(document_id))]

    def _op_GetDocumentEntity(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        return [("Response", self._document_value(_int(args, "DocumentEntityId")))]

    def _op_SetDocumentStream(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        entity = {_local(item.tag): item for item in args.get("DocumentEntity", [])}
        document_id = _int(entity, "DocumentId")
        document = self.documents.get(document_id)
        stream = args.get("Stream")
        if document is None or stream is None:
            raise SoapFault(f"Document {document_id} not found", "SoNotFoundException")
        document.path = Path(stream.get("sim-file", ""))
        return [("Response", self._document_value(document_id))]

    def _op_GetDocumentStream(self, args: dict[str, ET.Element]) -> Response:
        document = self.documents.get(_int(args, "DocumentId"))
        if document is None:
            raise SoapFault("Document not found", "SoNotFoundException")
        return self._stream("GetDocumentStream", document.path)

    def _op_DeleteDocumentEntity(self, args: dict[str, ET.Element]) -> list[tuple[str, Value]]:
        self.documents.pop(_int(args, "DocumentEntityId"), None)
        return []


# ------------------------------------------------------------------------------------------ helpers


def _str(args: dict[str, Any], name: str) -> str:
    item = args.get(name)
    return "" if item is None else (item.text or "")


def _int(args: dict[str, Any], name: str) -> int:
    item = args.get(name)
    return 0 if item is None or not (item.text or "").strip() else int((item.text or "0").strip())


def _image_mime(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


async def _drain(request: Request) -> None:
    try:
        async for _chunk in request.stream():
            pass
    except (ClientDisconnect, RuntimeError):
        pass


async def _send_then_drop(response: Response, send: Send) -> None:
    """Announce the full body, send half of it, then break the connection."""
    if isinstance(response, StreamingResponse):
        body = b"".join([chunk async for chunk in response.body_iterator])  # type: ignore[misc]
    else:
        body = bytes(response.body)
    headers = [(key, value) for key, value in response.raw_headers if key.lower() != b"content-length"]
    headers.append((b"content-length", str(max(len(body), 2)).encode()))
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
    raise ConnectionResetError("simulated connection drop")


# ------------------------------------------------------------------------------------------ seeding

PRINTER_TICKET = 1001
OTHER_TICKET = 1002
ALEXANDER_WILSON = 11
JOHN_BEST = 12


def contract_simulator(**options: Any) -> SuperOfficeSimulator:
    """A simulator holding the data the contract suite expects (see tests/contract/harnesses.py)."""
    sim = SuperOfficeSimulator(**options)
    sim.add_person("Alexander", "Wilson", person_id=ALEXANDER_WILSON, image=_demo.avatar_png())
    sim.add_person("John", "Best", person_id=JOHN_BEST)
    sim.add_person("Pat", "O'Brien")
    sim.add_ticket("Printer on fire", ticket_id=PRINTER_TICKET)
    sim.add_ticket("Invoice shows the wrong VAT", ticket_id=OTHER_TICKET)
    sim.add_message(
        PRINTER_TICKET,
        "Our printer caught fire, see the log and a photo.",
        {
            "error-log.txt": ("text/plain", b"09:14 E-451 fuser over temperature\n09:15 smoke detected near tray 2\n"),
            "printer.png": ("image/png", _demo.printer_png()),
        },
    )
    sim.add_message(PRINTER_TICKET, "We are on it.")
    sim.add_message(
        PRINTER_TICKET,
        "Service report attached.",
        {"service-report.pdf": ("application/pdf", _demo.simple_pdf("Service report", ["Unit replaced"]))},
    )
    return sim


@contextmanager
def serve(app: SuperOfficeSimulator) -> Iterator[str]:
    """Run `app` with uvicorn on a free loopback port in a background thread; yield the tenant URL."""
    with serve_on_loopback(app, "SuperOffice") as port:
        yield f"http://127.0.0.1:{port}/{app.tenant}"


def main() -> None:
    """`python -m tests.simulators.superoffice`: serve the contract data, print the tenant URL, run until
    stdin closes."""
    with serve(contract_simulator()) as url:
        print(url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
