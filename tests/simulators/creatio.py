"""A strict, in-memory Creatio (OData 4) for tests: an ASGI app that behaves the way Creatio is
documented and reported to behave, quirks included.

- Forms login at `/ServiceModel/AuthService.svc/Login` sets `BPMLOADER`, `.ASPXAUTH`, `BPMCSRF` and
  `UserName`; bad credentials are HTTP 200 with `Code: 1`.
- Writes (POST/PUT/PATCH/DELETE) and `$batch` need the `BPMCSRF` header matching the session (403).
- A request without a valid session gets what Creatio's clients see: the HTML login page with 200
  (default), a 302 to the login page, or 401 (`expiry_style`). Such a request is not processed.
- OAuth 2 client credentials at `/connect/token`; `Authorization: Bearer` then replaces cookies. A
  token stops working `token_lifetime` seconds after it was issued (on `clock`): 401.
- `$filter`: `Id eq <guid>`, `<Lookup>/Id eq <guid>`, `<col> eq 'text'`, `contains(<col>,'text')`,
  `and`/`or`/parentheses. A lookup's `<Lookup>Id` column in a filter is the type error users hit
  (`CaseId eq '<guid>'`), returned as 400 in the OData error shape. `$select/$top/$skip/$orderby`,
  at most `max_rows` (20,000) rows per answer.
- Streams on `Data` (GET/PUT/DELETE) of the file tables and `SysImage`; `Contact.PhotoId`. Downloads
  go out in `chunk_size` pieces (with Content-Length, or chunked when `announce_length` is off);
  uploads are read as they arrive (`received` shows the progress of each PUT). `TypeId` of a file
  record must be one of the `FileType` rows (File, Link, Entity link), as Creatio's foreign key wants.
- Unknown entity sets: the IIS HTML 404 page. Errors: `{"error": {"code", "message", "innererror"}}`.
  Entity sets in `denied` answer 403 in that shape (a user without rights on the object).

Fault switches (`fail`): 500 (before or after processing), 503 with Retry-After, a connection dropped
mid-body, or the session expiring just before a matching request. `expire_sessions()` expires now.
`hold` (a `threading.Event`, socket use only) pauses every download after its first chunk until it
is set, cutting the connection if that takes over 5 s: a client that waits for a whole body first fails.
Every request is logged in `requests` for assertions.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qs

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from crm_mcp.backends import _demo
from tests.simulators._loopback import serve_on_loopback

__all__ = ["CreatioSimulator", "Fault", "Logged", "contract_simulator", "serve"]

FILE_TYPE_FILE = "529bc2f8-0ee0-df11-971b-001d60e938c6"
FILE_TYPE_LINK = "539bc2f8-0ee0-df11-971b-001d60e938c6"
EMPTY = "00000000-0000-0000-0000-000000000000"
LOGIN_PATH = "/ServiceModel/AuthService.svc/Login"
LOGIN_PAGE = "/Login/NuiLogin.aspx"
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
KEY = re.compile(r"^(?P<set>[A-Za-z]+)\((?P<key>[^)]*)\)(?:/(?P<prop>[A-Za-z]+))?$")

Kind = Literal["guid", "lookup", "str", "int", "date", "bool"]

# entity set → column → kind; a "lookup" column `XId` points at entity set `X` (see LOOKUPS)
SCHEMAS: dict[str, dict[str, Kind]] = {
    "Account": {"Id": "guid", "Name": "str", "CreatedOn": "date", "ModifiedOn": "date"},
    "Contact": {
        "Id": "guid",
        "Name": "str",
        "GivenName": "str",
        "Surname": "str",
        "Email": "str",
        "AccountId": "lookup",
        "PhotoId": "lookup",
        "CreatedOn": "date",
        "ModifiedOn": "date",
    },
    "Case": {
        "Id": "guid",
        "Number": "str",
        "Subject": "str",
        "ContactId": "lookup",
        "AccountId": "lookup",
        "CreatedOn": "date",
        "ModifiedOn": "date",
    },
    "SysImage": {
        "Id": "guid",
        "Name": "str",
        "MimeType": "str",
        "HasRef": "bool",
        "Hash": "str",
        "UploadedOn": "date",
        "CreatedOn": "date",
        "ModifiedOn": "date",
    },
}
_FILE_COLUMNS: dict[str, Kind] = {
    "Id": "guid",
    "Name": "str",
    "Notes": "str",
    "TypeId": "lookup",
    "Version": "int",
    "Size": "int",
    "CreatedOn": "date",
    "ModifiedOn": "date",
    "Tag": "str",
}
for _parent in ("Case", "Contact", "Account"):
    SCHEMAS[f"{_parent}File"] = {**_FILE_COLUMNS, f"{_parent}Id": "lookup"}
LOOKUPS = {
    "AccountId": "Account",
    "ContactId": "Contact",
    "CaseId": "Case",
    "PhotoId": "SysImage",
    "TypeId": "FileType",
}
SCHEMAS["FileType"] = {"Id": "guid", "Name": "str"}
FILE_TYPE_ENTITY_LINK = "549bc2f8-0ee0-df11-971b-001d60e938c6"
FILE_TYPES = {FILE_TYPE_FILE: "File", FILE_TYPE_LINK: "Link", FILE_TYPE_ENTITY_LINK: "Link to object"}
STREAM_SETS = {"SysImage", "CaseFile", "ContactFile", "AccountFile"}


class ODataError(Exception):
    def __init__(self, status: int, message: str, inner: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.inner = inner


@dataclass
class Fault:
    """Make matching requests fail. `kind`: "500" (refused before processing), "500-after" (processed,
    then 500), "503" (with `retry_after`), "drop" (half the response body, then the connection is cut;
    for writes after processing), "expire" (sessions expire just before the request). The first `after`
    matching requests pass untouched; then `times` of them fail."""

    method: str
    path_contains: str
    kind: Literal["500", "500-after", "503", "drop", "expire"]
    times: int = 1
    retry_after: int = 1
    after: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times <= 0 or method != self.method or self.path_contains not in path:
            return False
        if self.after > 0:
            self.after -= 1
            return False
        return True


@dataclass
class Logged:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int = 0
    processed: bool = False


@dataclass
class CreatioSimulator:
    username: str = "Supervisor"
    password: str = "Supervisor!1"
    client_id: str = "crm-mcp-client"
    client_secret: str = "s3cr3t-client-value"
    token_lifetime: int = 3600
    odata_root: str = "/0/odata"
    expiry_style: Literal["html", "redirect", "401"] = "html"
    max_rows: int = 20_000
    max_file_size: int = 10 * 1024 * 1024
    chunk_size: int = 65_536
    announce_length: bool = True
    """Send Content-Length with downloads (else chunked transfer encoding)."""
    hold: threading.Event | None = None
    token_expires_in: bool = True
    denied: set[str] = field(default_factory=set)
    """Entity sets the logged-in user has no rights on: any request to them is 403."""
    """Put `expires_in` in token answers (the notes say to assume 3600 s when it is missing)."""
    tables: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {name: {} for name in SCHEMAS})
    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)
    """.ASPXAUTH value → BPMCSRF value."""
    tokens: dict[str, datetime] = field(default_factory=dict)
    """OAuth access token → when it stops working."""
    received: dict[tuple[str, str], int] = field(default_factory=dict)
    """(entity set, id) → bytes of the latest PUT of its Data received so far."""
    faults: list[Fault] = field(default_factory=list)
    requests: list[Logged] = field(default_factory=list)
    logins: int = 0
    token_requests: int = 0
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        for type_id, name in FILE_TYPES.items():
            self.tables["FileType"].setdefault(type_id, {"Id": type_id, "Name": name})

    # ------------------------------------------------------------------------------- test API

    def fail(
        self, method: str, path_contains: str, kind: Any, *, times: int = 1, retry_after: int = 1, after: int = 0
    ) -> Fault:
        fault = Fault(method, path_contains, kind, times, retry_after, after)
        self.faults.append(fault)
        return fault

    def expire_sessions(self) -> None:
        self.sessions.clear()
        self.tokens.clear()

    def writes(self, method: str | None = None, contains: str = "") -> list[Logged]:
        return [
            entry
            for entry in self.requests
            if entry.method != "GET" and (method is None or entry.method == method) and contains in entry.path
        ]

    def add(self, entity: str, **values: Any) -> str:
        row = self._new_row(entity, values)
        self.tables[entity][row["Id"]] = row
        return row["Id"]

    def row(self, entity: str, record_id: str) -> dict[str, Any] | None:
        return self.tables[entity].get(record_id.lower())

    # --------------------------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # pragma: no cover -- uvicorn runs with lifespan="off"
            return
        request = Request(scope, receive)
        logged = Logged(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers={key.lower(): value for key, value in request.headers.items()},
        )
        self.requests.append(logged)
        response = await self._handle(request, logged)
        logged.status = response.status_code
        if getattr(response, "drop_after", None) is not None:
            await _send_then_drop(response, send)
            return
        await response(scope, receive, send)

    async def _handle(self, request: Request, logged: Logged) -> Response:
        path = request.url.path
        method = request.method
        fault = next((f for f in self.faults if f.matches(method, path)), None)
        if fault is not None:
            fault.times -= 1
            if fault.kind == "expire":
                self.expire_sessions()
                fault = None
            elif fault.kind == "500":
                await _drain(request)
                return _error(500, "An error has occurred.", "System.Data.SqlClient.SqlException: Timeout expired.")
            elif fault.kind == "503":
                await _drain(request)
                return Response(
                    "<html><body>Service Unavailable</body></html>",
                    status_code=503,
                    media_type="text/html",
                    headers={"Retry-After": str(fault.retry_after)},
                )
        try:
            if path == LOGIN_PATH and method == "POST":
                return await self._login(request)
            if path == "/connect/token" and method == "POST":
                return await self._token(request)
            if path == LOGIN_PAGE:
                return _login_page()
            if not path.startswith(self.odata_root + "/"):
                return _iis_404()
            denied = await self._authorize(request)
            if denied is not None:
                return denied
            entity_set = re.split(r"[(/]", path.removeprefix(self.odata_root + "/"), maxsplit=1)[0]
            if entity_set in self.denied:
                await _drain(request)
                return _error(
                    403,
                    "An error has occurred.",
                    f"Terrasoft.Common.SecurityException: Insufficient permissions on object '{entity_set}'.",
                )
            response = await self._odata(request, path.removeprefix(self.odata_root + "/"))
            logged.processed = method != "GET" and response.status_code < 400
        except ODataError as exc:
            return _error(exc.status, exc.message, exc.inner)
        except ClientDisconnect:
            return Response(status_code=400)
        if fault is not None and fault.kind == "500-after":
            return _error(500, "An error has occurred.", "System.TimeoutException: The operation has timed out.")
        if fault is not None and fault.kind == "drop":
            if isinstance(response, _BlobResponse):
                response.drop = True
            else:
                response.drop_after = True  # type: ignore[attr-defined]
        return response

    # --------------------------------------------------------------------------------- auth

    async def _login(self, request: Request) -> Response:
        self.logins += 1
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("application/json"):
            await _drain(request)
            return Response(
                f"Cannot process the message because the content type '{content_type}' was not the expected "
                "type 'application/json; charset=utf-8'.",
                status_code=415,
                media_type="text/plain",
            )
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return _error(400, "The request body is not a JSON object.")
        if body.get("UserName") != self.username or body.get("UserPassword") != self.password:
            return JSONResponse(
                {
                    "Code": 1,
                    "Message": "Either user name or password specified incorrectly.",
                    "Exception": None,
                    "PasswordChangeUrl": None,
                    "RedirectUrl": None,
                }
            )
        auth, csrf = secrets.token_hex(32), secrets.token_urlsafe(16)
        self.sessions[auth] = csrf
        response = JSONResponse(
            {"Code": 0, "Message": "", "Exception": None, "PasswordChangeUrl": None, "RedirectUrl": None}
        )
        response.set_cookie("BPMLOADER", secrets.token_hex(8), httponly=True)
        response.set_cookie(".ASPXAUTH", auth, httponly=True)
        response.set_cookie("BPMCSRF", csrf)
        response.set_cookie("UserName", self.username)
        return response

    async def _token(self, request: Request) -> Response:
        self.token_requests += 1
        form = {key: values[0] for key, values in parse_qs((await request.body()).decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return JSONResponse({"error": "invalid_client"}, status_code=400)
        token = secrets.token_urlsafe(24)
        self.tokens[token] = self.clock() + timedelta(seconds=self.token_lifetime)
        answer: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
        if self.token_expires_in:
            answer["expires_in"] = self.token_lifetime
        return JSONResponse(answer)

    async def _authorize(self, request: Request) -> Response | None:
        bearer = request.headers.get("authorization", "")
        if bearer.startswith("Bearer "):
            expires = self.tokens.get(bearer.removeprefix("Bearer "))
            if expires is not None and self.clock() < expires:
                return None
            await _drain(request)
            return Response(status_code=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        csrf = self.sessions.get(request.cookies.get(".ASPXAUTH", ""))
        if csrf is None:
            await _drain(request)
            return self._not_logged_in(request)
        if request.method != "GET" and request.headers.get("bpmcsrf") != csrf:
            await _drain(request)
            return Response(
                "<html><head><title>403 - Forbidden</title></head><body>403 - Forbidden: Access is denied."
                "</body></html>",
                status_code=403,
                media_type="text/html",
            )
        return None

    def _not_logged_in(self, request: Request) -> Response:
        if self.expiry_style == "401":
            return Response(status_code=401)
        if self.expiry_style == "redirect":
            return Response(status_code=302, headers={"Location": f"{LOGIN_PAGE}?ReturnUrl={request.url.path}"})
        return _login_page()

    # -------------------------------------------------------------------------------- OData

    async def _odata(self, request: Request, rest: str) -> Response:
        method = request.method
        if rest == "$batch":
            if method != "POST":
                raise ODataError(405, "The HTTP method is not allowed for $batch.")
            return await self._batch(request)
        if rest in self.tables:
            if method == "GET":
                return self._query(rest, request.query_params)
            if method == "POST":
                return self._create(rest, await _json_body(request))
            raise ODataError(405, f"The HTTP method '{method}' is not allowed on the entity set '{rest}'.")
        match = KEY.match(rest)
        if match is None or match["set"] not in self.tables:
            if match is None and re.match(r"^[A-Za-z]+$", rest):
                return _iis_404()
            if match is not None:
                return _iis_404()
            raise ODataError(400, f"Resource not found for the segment '{rest}'.")
        entity, key, prop = match["set"], match["key"], match["prop"]
        if not GUID.match(key):
            raise ODataError(
                400,
                f"The key value '{key}' is not a valid Edm.Guid literal.",
                "Microsoft.OData.ODataException: Bad Request - Error in query syntax.",
            )
        record_id = key.lower()
        row = self.tables[entity].get(record_id)
        if row is None:
            await _drain(request)
            raise ODataError(404, f"Entity of type '{entity}' with key '{record_id}' was not found.")
        if prop is None:
            if method == "GET":
                return _json(200, {"@odata.context": f"$metadata#{entity}/$entity", **self._shown(entity, row)})
            if method == "PATCH":
                self._update(entity, row, await _json_body(request))
                return Response(status_code=204)
            if method == "DELETE":
                del self.tables[entity][record_id]
                self.blobs.pop((entity, record_id), None)
                return Response(status_code=204)
            raise ODataError(405, f"The HTTP method '{method}' is not allowed here.")
        if prop != "Data" or entity not in STREAM_SETS:
            raise ODataError(
                400, f"Could not find a property named '{prop}' on type 'Terrasoft.Configuration.{entity}'."
            )
        return await self._stream(request, entity, record_id)

    async def _stream(self, request: Request, entity: str, record_id: str) -> Response:
        """GET/PUT/DELETE of a record's `Data` stream property."""
        method = request.method
        if method == "GET":
            data = self.blobs.get((entity, record_id))
            if data is None:
                return Response(status_code=204)
            return _BlobResponse(data, self.chunk_size, announce=self.announce_length, hold=self.hold)
        if method == "PUT":
            content_type = request.headers.get("content-type", "")
            if not content_type.lower().startswith("application/octet-stream"):
                await _drain(request)
                raise ODataError(415, f"The content type '{content_type}' is not supported for a stream property.")
            key = (entity, record_id)
            self.received[key] = 0
            parts: list[bytes] = []
            async for chunk in request.stream():  # read as it arrives; a cut body stores nothing
                parts.append(chunk)
                self.received[key] += len(chunk)
            data = b"".join(parts)
            if len(data) > self.max_file_size:
                raise ODataError(
                    400,
                    "An error has occurred.",
                    "Terrasoft.Common.InvalidObjectStateException: file size exceeds the system setting "
                    f"MaxFileSize ({self.max_file_size})",
                )
            self.blobs[(entity, record_id)] = data
            return Response(status_code=200)
        if method == "DELETE":
            self.blobs.pop((entity, record_id), None)
            return Response(status_code=204)
        raise ODataError(405, f"The HTTP method '{method}' is not allowed on a stream property.")

    def _query(self, entity: str, params: Any) -> Response:
        known = {"$filter", "$select", "$top", "$skip", "$orderby", "$count", "$expand"}
        for key in params:
            if key.startswith("$") and key not in known:
                raise ODataError(400, f"The query parameter '{key}' is not supported.")
        if "$expand" in params:
            # Creatio supports it; this simulator does not model navigation data, so refuse loudly
            # rather than answer without the expansion.
            raise ODataError(501, "$expand is not modelled by the Creatio simulator.")
        count = params.get("$count", "false")
        if count not in ("true", "false"):
            raise ODataError(400, f"Invalid value '{count}' for $count: true or false is expected.")
        columns = SCHEMAS[entity]
        rows = list(self.tables[entity].values())
        if "$filter" in params:
            predicate = _FilterParser(params["$filter"], entity, columns).parse()
            rows = [row for row in rows if predicate(row)]
        if "$orderby" in params:
            for part in reversed([p.strip() for p in params["$orderby"].split(",")]):
                name, _, direction = part.partition(" ")
                if name not in columns:
                    raise _no_property(name, entity)
                rows.sort(key=lambda row, name=name: _sort_key(row.get(name)), reverse=direction.strip() == "desc")
        skip = _integer(params.get("$skip", "0"), "$skip")
        top = _integer(params["$top"], "$top") if "$top" in params else None
        total = len(rows)
        rows = rows[skip:]
        rows = rows[: min(top, self.max_rows) if top is not None else self.max_rows]
        select = [name.strip() for name in params["$select"].split(",")] if "$select" in params else None
        for name in select or []:
            if name not in columns:
                raise _no_property(name, entity)
        shown = [self._shown(entity, row, select) for row in rows]
        answer: dict[str, Any] = {"@odata.context": f"$metadata#{entity}"}
        if count == "true":
            answer["@odata.count"] = total
        return _json(200, answer | {"value": shown})

    def _shown(self, entity: str, row: dict[str, Any], select: list[str] | None = None) -> dict[str, Any]:
        if select is not None:
            return {name: row[name] for name in select}
        shown = dict(row)
        if entity in STREAM_SETS:
            link = f"{entity}({row['Id']})/Data"
            shown |= {
                "Data@odata.mediaEditLink": link,
                "Data@odata.mediaReadLink": link,
                "Data@odata.mediaContentType": "application/octet-stream",
            }
        return shown

    def _new_row(self, entity: str, values: dict[str, Any]) -> dict[str, Any]:
        columns = SCHEMAS[entity]
        now = self.clock().strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
        row: dict[str, Any] = {}
        for name, kind in columns.items():
            default: Any = {"guid": None, "lookup": EMPTY, "str": "", "int": 0, "date": now, "bool": False}[kind]
            row[name] = default
        if entity == "SysImage":
            row["UploadedOn"] = "0001-01-01T00:00:00Z"
        for name, value in values.items():
            if name not in columns:
                raise ODataError(
                    400,
                    f"The property '{name}' does not exist on type 'Terrasoft.Configuration.{entity}'. "
                    "Make sure to only use property names that are defined by the type.",
                )
            row[name] = _coerce(name, columns[name], value)
        row["Id"] = row["Id"] or str(uuid.uuid4())
        for name, kind in columns.items():
            target = LOOKUPS.get(name)
            if kind == "lookup" and target in self.tables and row[name] not in (EMPTY, *self.tables[target]):
                raise ODataError(
                    500,
                    "An error has occurred.",
                    "System.Data.SqlClient.SqlException: The INSERT statement conflicted with the FOREIGN KEY "
                    f"constraint 'FK{entity}{name}'.",
                )
        return row

    def _create(self, entity: str, body: dict[str, Any]) -> Response:
        row = self._new_row(entity, body)
        if row["Id"] in self.tables[entity]:
            raise ODataError(
                500,
                "An error has occurred.",
                f"System.Data.SqlClient.SqlException: Violation of PRIMARY KEY constraint 'PK{entity}Id'. "
                f"Cannot insert duplicate key in object 'dbo.{entity}'.",
            )
        self.tables[entity][row["Id"]] = row
        return _json(201, {"@odata.context": f"$metadata#{entity}/$entity", **self._shown(entity, row)})

    def _update(self, entity: str, row: dict[str, Any], body: dict[str, Any]) -> None:
        columns = SCHEMAS[entity]
        changed = dict(row)
        for name, value in body.items():
            if name not in columns or name == "Id":
                raise ODataError(400, f"The property '{name}' cannot be changed on '{entity}'.")
            changed[name] = _coerce(name, columns[name], value)
            target = LOOKUPS.get(name)
            if target in self.tables and changed[name] != EMPTY and changed[name] not in self.tables[target]:
                raise ODataError(500, "An error has occurred.", "System.Data.SqlClient.SqlException: FOREIGN KEY")
        row.update(changed)

    async def _batch(self, request: Request) -> Response:
        body = await _json_body(request)
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or len(requests) > 100:
            raise ODataError(400, "A $batch request needs 'requests' (at most 100).")
        raise ODataError(501, "This simulator accepts $batch requests but does not run them.")


# ---------------------------------------------------------------------------------- $filter


class _FilterParser:
    """The small part of OData `$filter` Creatio clients use; strict about types like Creatio."""

    TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<punct>[(),])|(?P<word>[A-Za-z0-9_./:-]+))")

    def __init__(self, text: str, entity: str, columns: dict[str, Kind]) -> None:
        self.entity = entity
        self.columns = columns
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            match = self.TOKEN.match(text, pos)
            if match is None:
                raise ODataError(400, f"Syntax error at position {pos} in '{text}'.")
            kind = match.lastgroup or "word"
            self.tokens.append((kind, match[kind]))
            pos = match.end()
        self.pos = 0

    def parse(self) -> Callable[[dict[str, Any]], bool]:
        predicate = self._or()
        if self.pos != len(self.tokens):
            raise ODataError(400, f"Syntax error: unexpected '{self.tokens[self.pos][1]}'.")
        return predicate

    def _peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def _take(self) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise ODataError(400, "Syntax error: the filter ends too early.")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def _or(self) -> Callable[[dict[str, Any]], bool]:
        left = self._and()
        while self._peek() == "or":
            self._take()
            right, first = self._and(), left
            left = lambda row, a=first, b=right: a(row) or b(row)  # noqa: E731
        return left

    def _and(self) -> Callable[[dict[str, Any]], bool]:
        left = self._atom()
        while self._peek() == "and":
            self._take()
            right, first = self._atom(), left
            left = lambda row, a=first, b=right: a(row) and b(row)  # noqa: E731
        return left

    def _atom(self) -> Callable[[dict[str, Any]], bool]:
        kind, value = self._take()
        if value == "(":
            inner = self._or()
            if self._take()[1] != ")":
                raise ODataError(400, "Syntax error: ')' expected.")
            return inner
        if value == "contains":
            return self._contains()
        if kind != "word":
            raise ODataError(400, f"Syntax error near {value}.")
        getter, column_kind = self._property(value)
        operator = self._take()[1]
        if operator not in ("eq", "ne"):
            raise ODataError(400, f"The operator '{operator}' is not supported by this simulator.")
        literal_kind, literal = self._take()
        expected = self._literal(column_kind, literal_kind, literal, value)
        if operator == "eq":
            return lambda row: _fold(getter(row)) == _fold(expected)
        return lambda row: _fold(getter(row)) != _fold(expected)

    def _property(self, name: str) -> tuple[Callable[[dict[str, Any]], Any], Kind]:
        if "/" in name:
            lookup, _, field_name = name.partition("/")
            if f"{lookup}Id" not in self.columns or field_name != "Id":
                raise _no_property(name, self.entity)
            column = f"{lookup}Id"
            return (lambda row: row[column]), "guid"
        if name not in self.columns:
            raise _no_property(name, self.entity)
        kind = self.columns[name]
        return (lambda row: row[name]), kind

    def _literal(self, column_kind: Kind, literal_kind: str, literal: str, name: str) -> Any:
        if column_kind == "lookup":
            # What users report (seed 001): any comparison on the lookup's Id column fails.
            found = "Edm.String" if literal_kind == "str" else "Edm.Guid"
            raise ODataError(
                400,
                "An error has occurred.",
                f"Microsoft.OData.ODataException: A binary operator with incompatible types was detected. Found "
                f"operand types 'Terrasoft.Configuration.Lookup' and '{found}' for operator kind 'Equal' "
                f"(property '{name}'; filter on the navigation property instead, e.g. '{name[:-2]}/Id eq <guid>').",
            )
        if column_kind == "guid":
            if literal_kind == "str" or not GUID.match(literal):
                raise ODataError(
                    400,
                    "An error has occurred.",
                    "Microsoft.OData.ODataException: A binary operator with incompatible types was detected. Found "
                    "operand types 'Edm.Guid' and 'Edm.String' for operator kind 'Equal'.",
                )
            return literal.lower()
        if column_kind == "str":
            if literal_kind != "str":
                raise ODataError(400, f"Operand types 'Edm.String' and '{literal}' are incompatible.")
            return literal[1:-1].replace("''", "'")
        if column_kind == "int":
            if not literal.lstrip("-").isdigit():
                raise ODataError(400, f"'{literal}' is not an Edm.Int32 literal.")
            return int(literal)
        raise ODataError(400, f"Comparing {column_kind} columns is not supported by this simulator.")

    def _contains(self) -> Callable[[dict[str, Any]], bool]:
        if self._take()[1] != "(":
            raise ODataError(400, "Syntax error: '(' expected after contains.")
        _, name = self._take()
        getter, kind = self._property(name)
        if kind != "str":
            raise ODataError(400, f"No function signature for 'contains' matches the type of '{name}'.")
        if self._take()[1] != ",":
            raise ODataError(400, "Syntax error: ',' expected.")
        literal_kind, literal = self._take()
        if literal_kind != "str":
            raise ODataError(400, "contains needs a string literal.")
        needle = _fold(literal[1:-1].replace("''", "'"))
        if self._take()[1] != ")":
            raise ODataError(400, "Syntax error: ')' expected.")
        return lambda row: needle in _fold(getter(row))


# ------------------------------------------------------------------------------------ helpers


def _fold(value: Any) -> Any:
    """SQL Server's default collation: case-insensitive."""
    return value.casefold() if isinstance(value, str) else value


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value.casefold()) if isinstance(value, str) else (1, value)


def _integer(value: str, name: str) -> int:
    if not value.isdigit():
        raise ODataError(400, f"Invalid value '{value}' for {name}: a non-negative integer is expected.")
    return int(value)


def _coerce(name: str, kind: Kind, value: Any) -> Any:
    if kind in ("guid", "lookup"):
        if not isinstance(value, str) or not GUID.match(value):
            raise ODataError(400, f"Cannot convert the literal '{value}' to the expected type 'Edm.Guid' ({name}).")
        return value.lower()
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ODataError(400, f"Cannot convert '{value}' to 'Edm.Int32' ({name}).")
        return value
    if kind == "bool":
        return bool(value)
    if not isinstance(value, str):
        raise ODataError(400, f"Cannot convert '{value}' to 'Edm.String' ({name}).")
    return value


def _no_property(name: str, entity: str) -> ODataError:
    return ODataError(
        400,
        "An error has occurred.",
        f"Microsoft.OData.ODataException: Could not find a property named '{name}' on type "
        f"'Terrasoft.Configuration.{entity}'.",
    )


def _json(status: int, body: Any) -> Response:
    return Response(json.dumps(body), status_code=status, media_type="application/json; odata.metadata=minimal")


def _error(status: int, message: str, inner: str | None = None) -> Response:
    error: dict[str, Any] = {"code": "", "message": message}
    if inner is not None:
        error["innererror"] = {"message": inner, "type": "", "stacktrace": ""}
    return _json(status, {"error": error})


def _iis_404() -> Response:
    return Response(
        "<!DOCTYPE html><html><head><title>404 - File or directory not found.</title></head><body>"
        "<div id='header'><h1>Server Error</h1></div><div id='content'><h2>404 - File or directory not "
        "found.</h2><h3>The resource you are looking for might have been removed, had its name changed, or is "
        "temporarily unavailable.</h3></div></body></html>",
        status_code=404,
        media_type="text/html",
    )


def _login_page() -> Response:
    return Response(
        "<!DOCTYPE html><html><head><title>Creatio</title></head><body><form id='loginForm' "
        "action='/ServiceModel/AuthService.svc/Login'>Login</form></body></html>",
        status_code=200,
        media_type="text/html; charset=utf-8",
    )


async def _drain(request: Request) -> None:
    """Read and drop a request body we refuse, so the client can finish sending it."""
    try:
        async for _chunk in request.stream():
            pass
    except (ClientDisconnect, RuntimeError):
        pass


async def _json_body(request: Request) -> Any:
    content_type = request.headers.get("content-type", "")
    raw = await request.body()
    if not content_type.lower().startswith("application/json"):
        raise ODataError(415, f"The content type '{content_type}' is not supported; use application/json.")
    try:
        return json.loads(raw)
    except ValueError:
        raise ODataError(400, "The request body is not valid JSON.") from None


class _BlobResponse(Response):
    """A stream property's bytes, sent in pieces the way a real server streams them."""

    def __init__(self, data: bytes, chunk_size: int, *, announce: bool, hold: threading.Event | None) -> None:
        super().__init__(status_code=200, media_type="application/octet-stream")
        self.data = data
        self.chunk_size = max(1, chunk_size)
        self.announce = announce
        self.hold = hold
        self.drop = False
        """Cut the connection after half the bytes (the "drop" fault)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/octet-stream")]
        if self.announce or self.drop:
            headers.append((b"content-length", str(len(self.data)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        sent = 0
        for start in range(0, len(self.data), self.chunk_size):
            piece = self.data[start : start + self.chunk_size]
            if self.drop and sent + len(piece) > len(self.data) // 2:
                piece = piece[: max(0, len(self.data) // 2 - sent)]
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                raise ConnectionResetError("simulated connection drop")
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            sent += len(piece)
            if start == 0 and self.hold is not None:
                released = await anyio.to_thread.run_sync(self.hold.wait, 5.0)
                if not released:
                    raise ConnectionResetError("the client did not read the first chunk within 5 s")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_then_drop(response: Response, send: Send) -> None:
    """Announce the full body, send half of it, then break the connection."""
    body = bytes(response.body)
    headers = [(key, value) for key, value in response.raw_headers if key.lower() != b"content-length"]
    headers.append((b"content-length", str(max(len(body), 2)).encode()))
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
    raise ConnectionResetError("simulated connection drop")


# ------------------------------------------------------------------------------------ seeding

ALEXANDER_WILSON = "c4ed336c-3e9b-40fe-8b82-5632476472b4"
JOHN_BEST = "509c189d-37a0-49d5-80f4-7de9ab389f3a"
WILSON_PHOTO = "e07885d2-90ab-42ac-59b5-ef80eb6b8f09"
PRINTER_CASE = "5f3e1c52-8b7a-4d07-9a1e-0c2f3d4b5a61"
OTHER_CASE = "1a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d"
ACCOUNT = "e308b781-3c5b-4ecb-89ef-5c1ed4da488e"
PRINTER_FILES = {
    "CaseFile.7bb283a4-2f30-4193-87f3-79c8465ceda4": "error-log.txt",
    "CaseFile.0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5": "printer.png",
    "CaseFile.9f8e7d6c-5b4a-4392-8172-6f5e4d3c2b1a": "service-report.pdf",
}


def contract_simulator(**options: Any) -> CreatioSimulator:
    """A simulator holding the data the contract suite expects (see tests/contract/harnesses.py)."""
    sim = CreatioSimulator(**options)
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    def at(minutes: int) -> str:
        return (start + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"

    sim.add("Account", Id=ACCOUNT, Name="Our Company", CreatedOn=at(0))
    sim.add("SysImage", Id=WILSON_PHOTO, Name="alexander_wilson.png", MimeType="image/png", CreatedOn=at(1))
    sim.blobs[("SysImage", WILSON_PHOTO)] = _demo.avatar_png()
    sim.add(
        "Contact",
        Id=ALEXANDER_WILSON,
        Name="Alexander Wilson",
        GivenName="Alexander",
        Surname="Wilson",
        AccountId=ACCOUNT,
        PhotoId=WILSON_PHOTO,
        CreatedOn=at(2),
    )
    sim.add("Contact", Id=JOHN_BEST, Name="John Best", GivenName="John", Surname="Best", CreatedOn=at(3))
    sim.add("Contact", Name="Pat O'Brien", GivenName="Pat", Surname="O'Brien", CreatedOn=at(4))
    sim.add(
        "Case",
        Id=PRINTER_CASE,
        Number="SR00001001",
        Subject="Printer on fire",
        ContactId=ALEXANDER_WILSON,
        AccountId=ACCOUNT,
        CreatedOn=at(5),
    )
    sim.add("Case", Id=OTHER_CASE, Number="SR00001002", Subject="Invoice shows the wrong VAT", CreatedOn=at(6))
    contents = {
        "error-log.txt": b"09:14 E-451 fuser over temperature\n09:15 smoke detected near tray 2\n",
        "printer.png": _demo.printer_png(),
        "service-report.pdf": _demo.simple_pdf("Service report", ["Unit replaced", "Fuser cleaned"]),
    }
    for minutes, (file_id, name) in enumerate(PRINTER_FILES.items(), start=10):
        record_id = file_id.partition(".")[2]
        data = contents[name]
        sim.add(
            "CaseFile",
            Id=record_id,
            Name=name,
            CaseId=PRINTER_CASE,
            TypeId=FILE_TYPE_FILE,
            Size=len(data),
            CreatedOn=at(minutes if name != "service-report.pdf" else 11),  # two share a timestamp
        )
        sim.blobs[("CaseFile", record_id)] = data
    sim.add(
        "CaseFile",
        Name="https://support.example.com/kb/printer-fire",
        CaseId=PRINTER_CASE,
        TypeId=FILE_TYPE_LINK,
        CreatedOn=at(20),
    )
    return sim


@contextmanager
def serve(app: CreatioSimulator) -> Iterator[str]:
    """Run `app` with uvicorn on a free loopback port in a background thread; yield its base URL."""
    with serve_on_loopback(app, "Creatio") as port:
        yield f"http://127.0.0.1:{port}"
