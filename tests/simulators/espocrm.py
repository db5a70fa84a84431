"""A strict in-memory EspoCRM (8.4 to 9.x REST API, `/api/v1/`) as an ASGI app, for tests.

It behaves as EspoCRM's code and a real 8.4.2 instance do where the backend depends on it:

- Auth: `X-Api-Key` (API users with the ApiKey method), `X-Hmac-Authorization` (Hmac method:
  base64(apiKey + ":" + hex HMAC-SHA256(secret, "METHOD /path-after-api-v1")), query excluded),
  `Authorization: Basic` and `Espo-Authorization` (regular users). A failure is 401 with an empty
  body and no reason; more than 10 failed logins in 60 s → a bare 403 for EVERY request.
- `GET Case/{id}` carries `attachmentsIds/Names/Types`; `GET Case/{id}/attachments` answers an empty
  list (the real quirk); `GET Case/{id}/streamAttachments` exists only when `version >= (9, 1)` (newest
  first, as Attachment's default order); before that the generic related-records route takes the
  request and fails on the unknown link with a bare 500 (PHP's RuntimeException), as 8.4 and 9.0 do.
- `POST Attachment` (data URL JSON): role, field and parent checks, image type/extension/detected
  type checks with EspoCRM's reasons, `parentId`/`relatedId` cleared; chunked upload
  (`isBeingUploaded`, `POST Attachment/chunk/{id}`); `GET Attachment` (list) is admin-only.
- `PUT Case/{id} {"attachmentsIds": [...]}` REPLACES the list (left-out files are unlinked);
  `PUT Contact/{id} {"<field>Id": ...}` deletes the previous image. An id of an attachment that does
  not exist → 403 "Can't relate with non-existing record. …" with a `cannotRelateNonExisting` body.
- Optimistic concurrency (Case has it from 9.1 on): records carry `versionNumber`; a PUT with an
  `X-Version-Number` header that is not the current one and that changes something → 409 "modified"
  with `{"values", "versionNumber"}`. `versionNumber` in a request body is ignored, as EspoCRM does.
- Lists: `maxSize` (> 200 → 403), `offset`, `where[...]` (`contains`/`startsWith`/`endsWith` are SQL
  LIKE: `%` and `_` are wildcards, a backslash escapes them), `select`, `orderBy`/`order`, answering
  `{"total", "list"}`. Errors carry `X-Status-Reason`.

Fault switches (`faults`, `concurrent_link_changes`, `rival_links_before_put`, `drop_download`) and a
request log (`requests`)
let tests provoke and observe what a real server does under stress.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as _field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.helpers import PNG_1x1

__all__ = [
    "API_KEY",
    "PASSWORD",
    "SECRET",
    "Attachment",
    "EspoSimulator",
    "Fault",
    "Hold",
    "SimUser",
    "hmac_signature",
    "seeded_simulator",
]

MAX_SIZE = 200
LOCKOUT_FAILURES = 10
LOCKOUT_SECONDS = 60.0
IMAGE_TYPES = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "svg": "image/svg+xml",
    "avif": "image/avif",
}


def hmac_signature(api_key: str, secret_key: str, method: str, path: str) -> str:
    """What EspoCRM expects in `X-Hmac-Authorization` (path after /api/v1, no query)."""
    digest = hmac.new(secret_key.encode(), f"{method} {path}".encode(), hashlib.sha256).hexdigest()
    return base64.b64encode(f"{api_key}:{digest}".encode()).decode()


def _detect(data: bytes) -> str | None:
    """A small stand-in for PHP's finfo: the types image checks care about."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:12] in (b"ftypavif", b"ftypavis"):
        return "image/avif"
    head = data[:512].lstrip()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "image/svg+xml"
    if head and b"\x00" not in head:
        return "text/plain"
    return "application/octet-stream"


@dataclass
class SimUser:
    user_name: str
    type: str = "api"
    """"api", "regular" or "admin"."""
    auth_method: str | None = "ApiKey"
    """For API users: "ApiKey" or "Hmac"."""
    api_key: str | None = None
    secret_key: str | None = None
    password: str | None = None
    two_factor: bool = False
    """A regular user with 2FA: username and password alone get 401 "second-step-required"."""
    id: str = _field(default_factory=lambda: secrets.token_hex(9)[:17])

    @property
    def is_admin(self) -> bool:
        return self.type == "admin"


@dataclass
class Attachment:
    id: str
    name: str
    type: str
    data: bytearray
    role: str = "Attachment"
    field: str | None = None
    parent_type: str | None = None
    parent_id: str | None = None
    related_type: str | None = None
    related_id: str | None = None
    created_at: datetime = _field(default_factory=lambda: datetime.now(UTC))
    created_by_id: str | None = None
    being_uploaded: bool = False
    expected_size: int | None = None
    order: int = 0

    @property
    def size(self) -> int:
        return self.expected_size if self.being_uploaded and self.expected_size is not None else len(self.data)

    def attributes(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "size": self.size,
            "role": self.role,
            "field": self.field,
            "parentType": self.parent_type,
            "parentId": self.parent_id,
            "relatedType": self.related_type,
            "relatedId": self.related_id,
            "isBeingUploaded": self.being_uploaded,
            "createdAt": _stamp(self.created_at),
            "createdById": self.created_by_id,
        }


@dataclass
class Fault:
    """Answer matching requests with `status` (and `reason`, `retry_after`) `times` times."""

    method: str
    path: str
    """Regular expression matched against the path after /api/v1 (e.g. r"/Case/\\w+")."""
    status: int = 500
    reason: str = ""
    retry_after: int | None = None
    times: int = 1
    body: bytes = b""
    content_type: str | None = None


@dataclass
class Hold:
    """Keep the next matching request waiting (after authentication) until `release` is set;
    `reached` is set when it arrives. Lets a test cancel a client in the middle of a call."""

    method: str
    path: str
    reached: anyio.Event = _field(default_factory=anyio.Event)
    release: anyio.Event = _field(default_factory=anyio.Event)


def _contents(data: dict[str, Any]) -> bytes:
    """CreateInputFilter::handleContents: the bytes of the `file` data URL."""
    file = data.get("file")
    if "file" not in data:
        raise _Error(400, "No file contents.")
    if not isinstance(file, str):
        raise _Error(400, "Non-string file contents.")
    if "," not in file:
        raise _Error(400, "Bad file contents.")
    try:
        return base64.b64decode(file.split(",", 1)[1], validate=True)
    except binascii.Error:
        raise _Error(400, "Could not decode file contents.") from None


def _validated_name_and_type(data: dict[str, Any]) -> tuple[str, str]:
    """Record validation of Attachment: name required, varchar(255); type varchar(100)."""
    name, mime = data.get("name"), data.get("type")
    if not isinstance(name, str) or not name:
        raise _validation_failure("name", "required")
    if len(name) > 255:  # maxLength counts characters
        raise _validation_failure("name", "maxLength")
    if mime is not None and (not isinstance(mime, str) or len(mime) > 100):
        raise _validation_failure("type", "maxLength")
    return name, mime or ""


def _validation_failure(field: str, kind: str) -> _Error:
    """EspoCRM's ValidationError: 400, reason "validationFailure", the field and rule in the body."""
    body = {"messageTranslation": {"label": "validationFailure", "scope": None, "data": {"field": field, "type": kind}}}
    return _Error(400, "validationFailure", body)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


class _Error(Exception):
    def __init__(self, status: int, reason: str = "", body: Any = None) -> None:
        self.status, self.reason, self.body = status, reason, body


class EspoSimulator:
    """The simulated EspoCRM. Use it as an ASGI app (`httpx.ASGITransport(app=sim)`)."""

    def __init__(
        self,
        *,
        version: tuple[int, int] = (8, 4),
        photo_field: str | None = "cPhoto",
        optimistic_concurrency: bool | None = None,
        attachment_max_size: int = 256 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.version = version
        self.photo_field = photo_field
        self.optimistic_concurrency = version >= (9, 1) if optimistic_concurrency is None else optimistic_concurrency
        """Case's optimisticConcurrencyControl (on by default from 9.1; an admin can enable it on 8.x)."""
        self.attachment_max_size = attachment_max_size
        self.clock = clock
        self.users: list[SimUser] = []
        self.records: dict[str, dict[str, dict[str, Any]]] = {"Case": {}, "Contact": {}, "Account": {}, "Note": {}}
        self.attachments: dict[str, Attachment] = {}
        self.failed_logins: list[float] = []
        self.requests: list[tuple[str, str]] = []
        """(method, path after /api/v1) of every request, in order, including refused ones."""
        self.queries: list[str] = []
        """The query string of every request, in the same order."""
        self.faults: list[Fault] = []
        self.concurrent_link_changes = 0
        """This many `PUT Case` calls that change attachmentsIds are followed, at once, by another
        client's write based on the list from before them (their new id is lost)."""
        self.rival_links_before_put = 0
        """This many `PUT Case` calls that change attachmentsIds find that, since the caller read the case,
        another client linked a file of its own (a proper write: the version number moves on)."""
        self.drop_download = 0
        """This many file downloads stop halfway (the declared Content-Length is not met)."""
        self.holds: list[Hold] = []
        self.latency = 0.0
        """Seconds every request waits before it is handled (lets concurrent calls interleave)."""
        self.on_body_chunk: Callable[[int], None] | None = None
        """Called with each request body piece's size as the simulator receives it."""
        self._sequence = itertools.count(1)
        self._case_numbers = itertools.count(1)
        self.app = Starlette(
            routes=[Route("/api/v1/{rest:path}", self._handle, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])]
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    # ---------------------------------------------------------------------------- seeding

    def new_id(self) -> str:
        return secrets.token_hex(9)[:17]

    def add_user(self, user: SimUser) -> SimUser:
        self.users.append(user)
        return user

    def add_case(self, name: str, number: int | None = None) -> str:
        case_id = self.new_id()
        self.records["Case"][case_id] = {
            "id": case_id,
            "name": name,
            "number": number if number is not None else next(self._case_numbers),
            "status": "New",
            "versionNumber": 1,
            "createdAt": _stamp(datetime.now(UTC)),
        }
        return case_id

    def add_contact(self, first_name: str, last_name: str) -> str:
        contact_id = self.new_id()
        record: dict[str, Any] = {"id": contact_id, "firstName": first_name, "lastName": last_name}
        record["createdAt"] = _stamp(datetime.now(UTC))
        self.records["Contact"][contact_id] = record
        return contact_id

    def add_account(self, name: str) -> str:
        account_id = self.new_id()
        self.records["Account"][account_id] = {"id": account_id, "name": name}
        return account_id

    def add_attachment(self, name: str, mime: str, data: bytes, **links: Any) -> Attachment:
        attachment = Attachment(
            id=self.new_id(), name=name, type=mime, data=bytearray(data), order=next(self._sequence), **links
        )
        self.attachments[attachment.id] = attachment
        return attachment

    def attach_to_case(self, case_id: str, name: str, mime: str, data: bytes) -> str:
        return self.add_attachment(name, mime, data, parent_type="Case", parent_id=case_id, field="attachments").id

    def post_to_stream(self, entity: str, record_id: str, name: str, mime: str, data: bytes) -> str:
        note_id = self.new_id()
        self.records["Note"][note_id] = {"id": note_id, "type": "Post", "parentType": entity, "parentId": record_id}
        return self.add_attachment(name, mime, data, parent_type="Note", parent_id=note_id, field="attachments").id

    def set_photo(self, contact_id: str, name: str, mime: str, data: bytes) -> str:
        assert self.photo_field
        attachment = self.add_attachment(
            name, mime, data, related_type="Contact", related_id=contact_id, field=self.photo_field
        )
        self.records["Contact"][contact_id][f"{self.photo_field}Id"] = attachment.id
        return attachment.id

    def case_attachment_ids(self, case_id: str) -> list[str]:
        linked = [
            item
            for item in self.attachments.values()
            if item.parent_type == "Case" and item.parent_id == case_id and item.field == "attachments"
        ]
        return [item.id for item in sorted(linked, key=lambda item: item.order)]

    def stream_attachments(self, entity: str, record_id: str) -> list[Attachment]:
        notes = {
            note_id
            for note_id, note in self.records["Note"].items()
            if note.get("parentType") == entity and note.get("parentId") == record_id
        }
        found = [item for item in self.attachments.values() if item.parent_type == "Note" and item.parent_id in notes]
        return sorted(found, key=lambda item: item.order)

    # ----------------------------------------------------------------------------- serving

    async def _handle(self, request: Request) -> Response:
        path = request.url.path[len("/api/v1") :]
        method = request.method
        self.requests.append((method, path))
        self.queries.append(request.url.query)
        if self._locked_out():
            return Response(status_code=403)
        user = self._authenticate(request, path)
        if user is None:
            return Response(status_code=401)
        if user.two_factor and not request.headers.get("espo-authorization-code"):
            body = {"status": "secondStepRequired", "message": None, "view": "login-second-step", "token": None}
            return JSONResponse(
                {**body, "data": None}, status_code=401, headers={"X-Status-Reason": "second-step-required"}
            )
        for fault in self.faults:
            if fault.times > 0 and fault.method == method and re.fullmatch(fault.path, path):
                fault.times -= 1
                headers = {"X-Status-Reason": fault.reason} if fault.reason else {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(fault.retry_after)
                await self._read_body(request)
                if fault.content_type:
                    headers["Content-Type"] = fault.content_type
                return Response(fault.body, status_code=fault.status, headers=headers)
        for hold in list(self.holds):
            if hold.method == method and re.fullmatch(hold.path, path):
                self.holds.remove(hold)
                hold.reached.set()
                await hold.release.wait()
        if self.latency:
            await anyio.sleep(self.latency)
        try:
            return await self._route(request, method, path, user)
        except _Error as error:
            headers = {"X-Status-Reason": error.reason} if error.reason else {}
            if error.body is not None:
                return JSONResponse(error.body, status_code=error.status, headers=headers)
            return Response(status_code=error.status, headers=headers)

    def _locked_out(self) -> bool:
        now = self.clock()
        self.failed_logins = [moment for moment in self.failed_logins if now - moment < LOCKOUT_SECONDS]
        return len(self.failed_logins) > LOCKOUT_FAILURES

    def _fail(self) -> None:
        self.failed_logins.append(self.clock())

    def _authenticate(self, request: Request, path: str) -> SimUser | None:
        headers = request.headers
        if key := headers.get("x-api-key"):
            for user in self.users:
                if user.type == "api" and user.auth_method == "ApiKey" and user.api_key == key:
                    return user
            self._fail()
            return None
        if signed := headers.get("x-hmac-authorization"):
            try:
                key_bytes, _, signature = base64.b64decode(signed, validate=True).partition(b":")
                api_key = key_bytes.decode()
            except (binascii.Error, UnicodeDecodeError):
                self._fail()
                return None
            for user in self.users:
                if user.type == "api" and user.auth_method == "Hmac" and user.api_key == api_key and user.secret_key:
                    signer = hmac.new(user.secret_key.encode(), f"{request.method} {path}".encode(), hashlib.sha256)
                    # The hex digest since 8.4.1; the raw-bytes digest of older clients is still accepted.
                    if hmac.compare_digest(signer.hexdigest().encode(), signature) or hmac.compare_digest(
                        signer.digest(), signature
                    ):
                        return user
            self._fail()
            return None
        basic = headers.get("authorization", "")
        raw = basic[6:] if basic.lower().startswith("basic ") else headers.get("espo-authorization")
        if raw:
            try:
                name, _, password = base64.b64decode(raw, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                self._fail()
                return None
            for user in self.users:
                if user.type in ("regular", "admin") and user.user_name == name and user.password == password:
                    return user
            self._fail()
            return None
        return None

    async def _read_body(self, request: Request) -> bytes:
        body = bytearray()
        async for piece in request.stream():
            if piece and self.on_body_chunk is not None:
                self.on_body_chunk(len(piece))
            body += piece
        return bytes(body)

    async def _json(self, request: Request) -> Any:
        raw = await self._read_body(request)
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise _Error(400, "Bad JSON.") from None

    async def _route(self, request: Request, method: str, path: str, user: SimUser) -> Response:
        parts = path.strip("/").split("/")
        entity = parts[0] if parts else ""
        if method == "GET" and parts == ["App", "user"]:
            return JSONResponse(
                {
                    "user": {"id": user.id, "userName": user.user_name, "type": user.type, "isAdmin": user.is_admin},
                    "settings": {
                        "attachmentUploadMaxSize": self.attachment_max_size // (1024 * 1024),
                        "attachmentUploadChunkSize": 4,
                    },
                }
            )
        if entity == "Attachment":
            return await self._attachment_route(request, method, parts[1:], user)
        if method == "POST" and parts == ["Note"]:
            return self._create_note(await self._json(request), user)
        if method == "POST" and parts[:2] == ["Admin", "fieldManager"] and len(parts) == 3:
            return self._add_field(parts[2], await self._json(request), user)
        if entity in ("Case", "Contact", "Account"):
            if len(parts) == 1 and method == "GET":
                return self._list(entity, request)
            if len(parts) >= 2:
                record = self.records[entity].get(parts[1])
                if record is None:
                    raise _Error(404, f"Record {parts[1]} does not exist.")
                if len(parts) == 2 and method == "GET":
                    return JSONResponse(self._present(entity, record))
                if len(parts) == 2 and method in ("PUT", "PATCH"):
                    version = request.headers.get("x-version-number")
                    return self._update(entity, record, await self._json(request), version)
                if len(parts) == 3 and method == "GET" and entity == "Case" and parts[2] == "attachments":
                    return JSONResponse({"total": 0, "list": []})
                if len(parts) == 3 and method == "GET" and parts[2] == "streamAttachments" and self.version >= (9, 1):
                    found = self.stream_attachments(entity, record["id"])
                    items = [item.attributes() for item in reversed(found)]  # createdAt desc
                    offset, size = self._paging(request)
                    return JSONResponse({"total": len(items), "list": items[offset : offset + size]})
                if len(parts) == 3 and method == "GET":
                    # The generic related-records route: an unknown link makes the ORM throw a
                    # RuntimeException ("Relation '…' does not exist."), which EspoCRM answers with a
                    # bare 500 — this is what 8.x and 9.0 answer to streamAttachments.
                    raise _Error(500)
        raise _Error(404)

    # --------------------------------------------------------------------------- records

    def _present(self, entity: str, record: dict[str, Any]) -> dict[str, Any]:
        out = dict(record)
        if entity == "Contact":
            out["name"] = " ".join(part for part in (record.get("firstName"), record.get("lastName")) if part)
            if self.photo_field:
                photo_id = record.get(f"{self.photo_field}Id")
                out[f"{self.photo_field}Id"] = photo_id
                photo = self.attachments.get(photo_id) if photo_id else None
                out[f"{self.photo_field}Name"] = photo.name if photo else None
            else:
                out.pop("cPhotoId", None)
        if entity == "Case":
            ids = self.case_attachment_ids(record["id"])
            out["attachmentsIds"] = ids
            out["attachmentsNames"] = {item: self.attachments[item].name for item in ids}
            out["attachmentsTypes"] = {item: self.attachments[item].type for item in ids}
        if entity == "Case" and not self.optimistic_concurrency:
            out.pop("versionNumber", None)
        return out

    def _paging(self, request: Request) -> tuple[int, int]:
        try:
            size = int(request.query_params.get("maxSize", MAX_SIZE))
            offset = int(request.query_params.get("offset", 0))
        except ValueError:
            raise _Error(400, "Bad maxSize or offset.") from None
        if size > MAX_SIZE:
            raise _Error(403, f"Max size should not exceed {MAX_SIZE}. Use offset and limit.")
        return max(offset, 0), max(size, 0)

    def _list(self, entity: str, request: Request) -> Response:
        offset, size = self._paging(request)
        where = _nest(parse_qsl(request.url.query, keep_blank_values=True)).get("where", [])
        rows = [self._present(entity, record) for record in self.records[entity].values()]
        rows = [row for row in rows if all(_matches(row, item) for item in _as_list(where))]
        order_by = request.query_params.get("orderBy")
        if order_by:
            if order_by not in (rows[0] if rows else {order_by: None}):
                raise _Error(400, f"Bad orderBy {order_by}.")
            rows.sort(key=lambda row: _sort_key(row.get(order_by)), reverse=request.query_params.get("order") == "desc")
        select = request.query_params.get("select")
        if select:
            wanted = {"id", *select.split(",")}
            rows = [{key: value for key, value in row.items() if key in wanted} for row in rows]
        return JSONResponse({"total": len(rows), "list": rows[offset : offset + size]})

    def _update(self, entity: str, record: dict[str, Any], data: Any, version: str | None) -> Response:
        if not isinstance(data, dict):
            raise _Error(400, "Bad data.")
        data.pop("versionNumber", None)  # a system attribute: EspoCRM drops it from input
        if entity == "Case" and "attachmentsIds" in data and self.rival_links_before_put > 0:
            self.rival_links_before_put -= 1
            rival = self.add_attachment("rival-linked.txt", "text/plain", b"linked by someone else")
            self._replace_case_attachments(record["id"], [*self.case_attachment_ids(record["id"]), rival.id])
            record["versionNumber"] = int(record.get("versionNumber") or 1) + 1
        if entity == "Case" and self.optimistic_concurrency and version is not None:
            self._check_version(record, data, version)
        if "name" in data and not str(data["name"] or "").strip():
            raise _validation_failure("name", "required")
        if entity == "Case" and "attachmentsIds" in data:
            ids = data["attachmentsIds"]
            if not isinstance(ids, list):
                raise _Error(400, "Bad attachmentsIds.")
            self._check_related(entity, "attachments", ids)
            before = self.case_attachment_ids(record["id"])
            self._replace_case_attachments(record["id"], ids)
            if self.concurrent_link_changes > 0:
                self.concurrent_link_changes -= 1
                rival = self.add_attachment("rival.txt", "text/plain", b"written by someone else")
                self._replace_case_attachments(record["id"], [*before, rival.id])
        if entity == "Contact" and self.photo_field and f"{self.photo_field}Id" in data:
            new_id = data[f"{self.photo_field}Id"]
            old_id = record.get(f"{self.photo_field}Id")
            if new_id is not None and new_id != old_id:
                self._check_related(entity, self.photo_field, [new_id])
            if new_id and new_id in self.attachments:
                photo = self.attachments[new_id]
                photo.related_type, photo.related_id = "Contact", record["id"]
            record[f"{self.photo_field}Id"] = new_id
            if old_id and old_id != new_id:
                self.attachments.pop(old_id, None)
        for key in ("name", "status", "firstName", "lastName"):
            if key in data:
                record[key] = data[key]
        record["versionNumber"] = int(record.get("versionNumber") or 1) + 1
        return JSONResponse(self._present(entity, record))

    def _check_version(self, record: dict[str, Any], data: dict[str, Any], version: str) -> None:
        """OptimisticProcessor: a stale X-Version-Number is a conflict only if the write changes a value."""
        try:
            sent = int(version)
        except ValueError:
            sent = 0  # PHP's intval
        current = record.get("versionNumber")
        if current is None or sent == current:
            return
        values: dict[str, Any] = {}
        if "attachmentsIds" in data and data["attachmentsIds"] != self.case_attachment_ids(record["id"]):
            values["attachmentsIds"] = self.case_attachment_ids(record["id"])
        for key in ("name", "status"):
            if key in data and data[key] != record.get(key):
                values[key] = record.get(key)
        if values:
            raise _Error(409, "modified", {"values": values, "versionNumber": current})

    def _check_related(self, entity: str, link: str, ids: list[Any]) -> None:
        """LinkCheck: every id set on a link field must be an existing record."""
        for item in ids:
            if not isinstance(item, str) or item not in self.attachments:
                raise _Error(
                    403,
                    f"Can't relate with non-existing record. entity type: {entity}, link: {link}.",
                    {
                        "messageTranslation": {
                            "label": "cannotRelateNonExisting",
                            "scope": None,
                            "data": {"foreignEntityType": "Attachment"},
                        }
                    },
                )

    def _replace_case_attachments(self, case_id: str, ids: list[Any]) -> None:
        wanted = [item for item in ids if isinstance(item, str) and item in self.attachments]
        for item in self.case_attachment_ids(case_id):
            if item not in wanted:
                self.attachments[item].parent_type = None
                self.attachments[item].parent_id = None
        for item in wanted:
            attachment = self.attachments[item]
            attachment.parent_type, attachment.parent_id, attachment.field = "Case", case_id, "attachments"

    def _create_note(self, data: Any, user: SimUser) -> Response:
        if not isinstance(data, dict):
            raise _Error(400, "Bad data.")
        parent_type, parent_id = data.get("parentType"), data.get("parentId")
        if data.get("type", "Post") != "Post" and not user.is_admin:
            raise _Error(403, "Only 'Post' type allowed.")
        if parent_type not in ("Case", "Contact", "Account") or parent_id not in self.records[parent_type]:
            raise _Error(403, "No access to parent.")
        ids = list(data.get("attachmentsIds") or [])
        self._check_related("Note", "attachments", ids)
        note_id = self.new_id()
        note = {
            "id": note_id,
            "type": "Post",
            "parentType": parent_type,
            "parentId": parent_id,
            "post": data.get("post"),
        }
        self.records["Note"][note_id] = note
        for item in ids:
            attachment = self.attachments[item]
            attachment.parent_type, attachment.parent_id, attachment.field = "Note", note_id, "attachments"
        return JSONResponse({**note, "attachmentsIds": ids})

    def _add_field(self, entity: str, data: Any, user: SimUser) -> Response:
        if not user.is_admin:
            raise _Error(403)
        if entity != "Contact" or not isinstance(data, dict) or data.get("type") != "image" or not data.get("name"):
            raise _Error(400, "Bad field definition.")
        name = "c" + str(data["name"])[0].upper() + str(data["name"])[1:]
        self.photo_field = name
        return JSONResponse({"name": name, "type": "image"})

    # ------------------------------------------------------------------------ attachments

    async def _attachment_route(self, request: Request, method: str, rest: list[str], user: SimUser) -> Response:
        if method == "GET" and not rest:
            if not user.is_admin:
                raise _Error(403)
            offset, size = self._paging(request)
            rows = [item.attributes() for item in self.attachments.values()]
            return JSONResponse({"total": len(rows), "list": rows[offset : offset + size]})
        if method == "POST" and not rest:
            return self._create_attachment(await self._json(request), user)
        if method == "POST" and len(rest) == 2 and rest[0] == "chunk":
            return self._chunk(rest[1], await self._read_body(request))
        if method == "GET" and len(rest) == 2 and rest[0] == "file":
            return self._file(rest[1])
        if len(rest) == 1:
            attachment = self.attachments.get(rest[0])
            if attachment is None:
                raise _Error(404, f"Record {rest[0]} does not exist.")
            if method == "GET":
                return JSONResponse(attachment.attributes())
            if method == "DELETE":
                del self.attachments[rest[0]]
                return JSONResponse(True)
        raise _Error(404)

    def _field_type(self, entity: str | None, name: str | None) -> str | None:
        fields = {
            "Case": {"attachments": "attachmentMultiple"},
            "Note": {"attachments": "attachmentMultiple"},
            "Contact": {self.photo_field: "image"} if self.photo_field else {},
            "Account": {},
        }
        return fields.get(entity or "", {}).get(name or "")

    def _create_attachment(self, data: Any, user: SimUser) -> Response:
        """EspoCRM's CreateInputFilter, AccessChecker, BeforeCreate and Checker, in their order."""
        if not isinstance(data, dict):
            raise _Error(400, "Bad data.")
        data.pop("parentId", None)  # cleared on create: attaching is always a second call
        data.pop("relatedId", None)
        being_uploaded = bool(data.get("isBeingUploaded"))
        payload = b"" if being_uploaded else _contents(data)
        if data.get("parentType") is not None:
            data.pop("relatedType", None)
        entity = data.get("parentType") or data.get("relatedType")
        name_of_field = data.get("field")
        role = data.get("role") or "Attachment"
        if not entity or not name_of_field:
            raise _Error(400, "No `field` and `parentType`.")
        if role not in ("Attachment", "Inline Attachment"):
            raise _Error(403, "Role not allowed.")
        kind = self._field_type(entity, name_of_field)
        if kind is None:
            raise _Error(403, f"Field '{name_of_field}' does not exist.")
        if kind not in ("file", "image", "attachmentMultiple"):
            raise _Error(403, f"Field type '{kind}' is not allowed for {role}.")
        max_mb = self.attachment_max_size / (1024 * 1024)
        if len(payload) > self.attachment_max_size:
            raise _Error(400, f"File size should not exceed {max_mb:g} Mb.")
        name, mime = _validated_name_and_type(data)
        size = data.get("size") if being_uploaded else len(payload)
        if not isinstance(size, int) or size < 0:
            size = 0  # no size: EspoCRM stores none, and every chunk is then a "File size mismatch."
        if size > self.attachment_max_size:
            raise _Error(403, "Attachment size exceeds `attachmentUploadMaxSize`.")
        if kind == "image":
            self._check_image(name, mime, None if being_uploaded else payload)
        attachment = self.add_attachment(
            name,
            mime,
            payload,
            role=role,
            field=name_of_field,
            parent_type=data.get("parentType"),
            related_type=data.get("relatedType"),
            created_by_id=user.id,
        )
        if being_uploaded:
            attachment.being_uploaded = True
            attachment.expected_size = size
        return JSONResponse(attachment.attributes())

    @staticmethod
    def _check_image(name: str, mime: str, payload: bytes | None) -> None:
        """Checker::checkTypeImage: the extension decides the type; declared and detected must match it."""
        extension = name.rsplit(".", 1)[1].lower() if "." in name else ""
        by_extension = IMAGE_TYPES.get(extension)
        if by_extension is None:
            raise _Error(403, "Not allowed file type.")
        if mime.lower() != by_extension:
            raise _Error(403, "Passed type does not correspond to extension.")
        if payload is not None and _detect(payload) != by_extension:
            raise _Error(403, "Detected mime type does not correspond to extension.")

    def _chunk(self, attachment_id: str, body: bytes) -> Response:
        """UploadService::uploadChunk, in its order (the size mismatch is found after appending)."""
        if not body:
            raise _Error(400)
        attachment = self.attachments.get(attachment_id)
        if attachment is None:
            raise _Error(404)
        if not attachment.being_uploaded:
            raise _Error(403, "Attachment is not being-uploaded.")
        text = body.decode("ascii", "replace")
        if ";base64," not in text:
            raise _Error(400, "Bad file data.")
        try:
            piece = base64.b64decode(text.split(";base64,", 1)[1], validate=True)
        except binascii.Error:
            raise _Error(400, "Bad file data.") from None
        if len(attachment.data) + len(piece) > self.attachment_max_size:
            raise _Error(403, "Max attachment size exceeded.")
        attachment.data += piece
        expected = attachment.expected_size or 0
        if len(attachment.data) > expected:
            raise _Error(500, "File size mismatch.")
        if len(attachment.data) < expected:
            return JSONResponse(True)
        if self._field_type(attachment.parent_type or attachment.related_type, attachment.field) == "image":
            try:
                self._check_image(attachment.name, attachment.type, bytes(attachment.data))
            except _Error:
                del self.attachments[attachment.id]
                raise
        attachment.being_uploaded = False
        return JSONResponse(True)

    def _file(self, attachment_id: str) -> Response:
        attachment = self.attachments.get(attachment_id)
        if attachment is None or attachment.being_uploaded:
            raise _Error(404)
        data = bytes(attachment.data)
        headers = {
            "Content-Disposition": f'attachment; filename="{attachment.name}"',
            "Content-Length": str(len(data)),
        }
        if self.drop_download > 0:
            self.drop_download -= 1
            return _Truncated(data, attachment.type, headers)
        return Response(data, media_type=attachment.type, headers=headers)


class _Truncated(Response):
    """Declares the full length but sends only half the body, as a dropped connection does."""

    def __init__(self, data: bytes, media_type: str, headers: dict[str, str]) -> None:
        super().__init__(b"", media_type=media_type, headers=headers)
        self.headers["content-length"] = str(len(data))
        self._half = data[: len(data) // 2]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self._half, "more_body": False})


# ------------------------------------------------------------------------------------------- where


def _nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """`where[0][value][1][type]=x` → nested dicts (numeric keys become lists later)."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            if parts:
                node[parts[-1]] = value
    return root


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, dict) and all(key.isdigit() for key in value):
        return [value[key] for key in sorted(value, key=int)]
    if isinstance(value, list):
        return value
    return [value]


def _text(value: Any) -> str:
    return "" if value is None else str(value).casefold()


def _matches(row: dict[str, Any], item: Any) -> bool:
    if not isinstance(item, dict) or "type" not in item:
        raise _Error(400, "Bad where item.")
    kind = item["type"]
    if kind in ("or", "and"):
        results = [_matches(row, sub) for sub in _as_list(item.get("value", []))]
        return any(results) if kind == "or" else all(results)
    attribute = item.get("attribute")
    if not attribute or attribute not in row:
        raise _Error(400, f"Bad where item. Unknown attribute {attribute}.")
    actual, value = row.get(attribute), item.get("value")
    if kind == "equals":
        return _text(actual) == _text(value)
    if kind == "notEquals":
        return _text(actual) != _text(value)
    # EspoCRM turns these into SQL LIKE without escaping the value: '%' and '_' stay wildcards.
    if kind == "contains":
        return _like(actual, f"%{_text(value)}%")
    if kind == "startsWith":
        return _like(actual, f"{_text(value)}%")
    if kind == "endsWith":
        return _like(actual, f"%{_text(value)}")
    if kind == "like":
        return _like(actual, _text(value))
    if kind == "in":
        return _text(actual) in {_text(entry) for entry in _as_list(value)}
    if kind == "isNull":
        return actual is None
    if kind == "isNotNull":
        return actual is not None
    raise _Error(400, f"Bad where item type {kind}.")


def _like(actual: Any, pattern: str) -> bool:
    """SQL LIKE as MySQL does it (case-insensitive collation): `%` any run, `_` one character,
    a backslash makes the next character literal."""
    regex = []
    characters = iter(pattern)
    for character in characters:
        if character == "\\":
            regex.append(re.escape(next(characters, "\\")))
        elif character == "%":
            regex.append(".*")
        elif character == "_":
            regex.append(".")
        else:
            regex.append(re.escape(character))
    return re.fullmatch("".join(regex), _text(actual), re.DOTALL) is not None


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, "")
    if isinstance(value, int | float):
        return (1, value)
    return (2, str(value).casefold())


# ------------------------------------------------------------------------------------------ seed

API_KEY = "harness-api-key-0001"
SECRET = "harness-hmac-secret-0001"
PASSWORD = "harness-password"
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


def seeded_simulator(version: tuple[int, int] = (8, 4)) -> EspoSimulator:
    """The contract data set: "Printer on fire" with files of several types, Alexander Wilson with a
    photo (image field cPhoto), John Best without, and users for every auth mode."""
    sim = EspoSimulator(version=version, photo_field="cPhoto")
    sim.add_user(SimUser("api-user", type="api", auth_method="ApiKey", api_key=API_KEY))
    sim.add_user(SimUser("hmac-user", type="api", auth_method="Hmac", api_key=API_KEY + "-h", secret_key=SECRET))
    sim.add_user(SimUser("jane", type="regular", auth_method=None, password=PASSWORD))
    sim.add_user(SimUser("admin", type="admin", auth_method=None, password=PASSWORD + "-admin"))
    case_id = sim.add_case("Printer on fire", number=1001)
    sim.attach_to_case(case_id, "fire-report.pdf", "application/pdf", PDF)
    sim.attach_to_case(case_id, "printer.png", "image/png", PNG_1x1)
    sim.attach_to_case(case_id, "log.txt", "text/plain", b"12:01 smoke\n12:02 flames\n")
    sim.add_case("Toner smudges", number=1002)
    if version >= (9, 1):
        sim.post_to_stream("Case", case_id, "readings.csv", "text/csv", b"t,temp\n1,80\n2,300\n")
    wilson = sim.add_contact("Alexander", "Wilson")
    sim.set_photo(wilson, "wilson.png", "image/png", PNG_1x1)
    sim.add_contact("John", "Best")
    sim.add_account("Acme Printing")
    return sim
