"""A Wello API simulator (ASGI), strict where the documentation is: what it accepts, the real API accepts.

Documented behaviour it reproduces (developers.wello.solutions: Authentication, OData, Paging, Files,
HandlingErrors, POST-api-DbFile, ResourceModel db_file):

- Basic auth with the user written as `username:password@domain`; 401 with a body otherwise.
  `X-Api-Version` is optional (`require_api_version=True` makes a missing one a 404, the documented symptom).
- OData `$filter` (case-sensitive operators: `and` works, `AND` is a 400), `$select`, `$top`, `$skip`,
  `$orderby`; server-driven paging of at most 20 rows with `@odata.nextLink`.
- Guid properties compare with unquoted GUIDs only (`id_in_table eq 3f25...`); a quoted one is a 400.
- `db_file`: `GET api/DbFile`, `GET api/DbFile(id)` (with `file_content` as base64), `POST api/DbFile`
  (required `id` and `name`, max lengths 100/4000, `file_size` filled in, `Prefer: return=minimal`),
  `PUT api/DbFile(id)`; DELETE is not documented and answers 405.
- POST/PUT bodies are JSON (`application/json` or `text/json`, two of the documented request formats; XML is
  not simulated): any other `Content-Type` is a 415.
- No nulls (LinkErp guide: "all fields have a default value"): unset fields are answered, filtered and sorted
  as "", the empty GUID, 0, false or 1980-01-01; an archived file's content is flushed to an empty byte array.
- Errors carry ASP.NET Web API bodies: `{"Message": ...}` and, for validation, `ModelState`.

Assumptions (not in the documentation): entity sets `Jobs`, `Task`, `Contact`, `Company`; job and task
fields `reference` and `subject`; contact fields `first_name` and `last_name`; string comparisons are
case-sensitive (so clients use `tolower`).

Fault switches (`sim.faults`) and a request log (`sim.requests`) let tests provoke and observe failures.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from crm_mcp.backends import _demo

PAGE_SIZE = 20
NAMESPACE = uuid.UUID("0b7f2f5e-3f0c-4b8e-9a52-7d9a1f3c1e20")


def sim_id(label: str) -> str:
    return str(uuid.uuid5(NAMESPACE, label))


JOB_PRINTER = sim_id("job:printer")
JOB_INVOICE = sim_id("job:invoice")
TASK_PORTAL = sim_id("task:portal")
CONTACT_ALEXANDER = sim_id("contact:alexander")
CONTACT_JOHN = sim_id("contact:john")
CONTACT_MARIA = sim_id("contact:maria")
COMPANY_NORTHWIND = sim_id("company:northwind")
FILE_ALEXANDER_PHOTO = sim_id("file:alexander-photo")
FILE_ARCHIVED = sim_id("file:archived")

# --------------------------------------------------------------------------------------- schema

_GUID = "guid"
_STR = "string"
_INT = "int"
_BOOL = "bool"
_DATE = "date"

DB_FILE_FIELDS: dict[str, str] = {
    "id": _GUID,
    "db_table_id": _GUID,
    "db_table_name": _STR,
    "id_in_table": _GUID,
    "name": _STR,
    "description": _STR,
    "file_name": _STR,
    "image_width": _INT,
    "image_heigth": _INT,
    "mime_type": _STR,
    "file_content": "bytes",
    "db_file_folder_id": _GUID,
    "sales_organization_id": _GUID,
    "file_type_name": _STR,
    "file_size": _INT,
    "user_notification": _BOOL,
    "is_archived": _BOOL,
    "date_add": _DATE,
    "date_update": _DATE,
    "modified_dateutc": _DATE,
}
_CASE_FIELDS = {
    "id": _GUID,
    "reference": _STR,
    "subject": _STR,
    "contact_id": _GUID,
    "company_id": _GUID,
    "date_add": _DATE,
}
SCHEMAS: dict[str, dict[str, str]] = {
    "DbFile": DB_FILE_FIELDS,
    "Jobs": _CASE_FIELDS,
    "Task": _CASE_FIELDS,
    "Contact": {"id": _GUID, "first_name": _STR, "last_name": _STR, "email": _STR, "company_id": _GUID},
    "Company": {"id": _GUID, "name": _STR},
}
TABLE_SETS = {"jobs": "Jobs", "task": "Task", "contact": "Contact", "company": "Company"}
LINKABLE_TABLES = ("article", "company", "contact", "jobs", "job_approval", "project", "task")
MAX_LENGTHS = {"name": 100, "file_name": 100, "mime_type": 100, "description": 4000}


EMPTY_GUID = "00000000-0000-0000-0000-000000000000"
DEFAULTS: dict[str, Any] = {_GUID: EMPTY_GUID, _STR: "", _INT: 0, _BOOL: False, _DATE: "1980-01-01T00:00:00"}
"""Wello stores no nulls: "all fields have a default value (boolean=false, numeric=0, datetime=1980-1-1)"
(LinkErp guide), and its answers show empty GUIDs and "" (HandlingErrors guide). What is unset here is
answered, filtered and sorted as that default."""


def value_of(row: dict[str, Any], name: str, kind: str) -> Any:
    value = row.get(name)
    return DEFAULTS.get(kind) if value is None else value


class ODataError(Exception):
    def __init__(self, status: int, message: str, model_state: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.model_state = model_state

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"Message": self.message}
        if self.model_state:
            body["ModelState"] = self.model_state
        return JSONResponse(body, status_code=self.status)


# ------------------------------------------------------------------------------------ $filter


_TOKEN = re.compile(
    r"\s*(?:(?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})(?![\w-])"
    r"|(?P<string>'(?:[^']|'')*')"
    r"|(?P<number>-?\d+)(?![\w.])"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<punct>[(),]))"
)
_COMPARE = {"eq", "ne", "gt", "ge", "lt", "le"}
_BOOL_FUNCS = {"contains", "startswith", "endswith"}
_VALUE_FUNCS = {"tolower", "toupper", "concat", "trim"}


@dataclass
class _Tok:
    kind: str
    text: str


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ODataError(
                400, f"The query specified in the URI is not valid. Syntax error at position {pos} in '{text}'."
            )
        kind = match.lastgroup or ""
        tokens.append(_Tok(kind, match.group(kind)))
        pos = match.end()
    return tokens


def _either(a: Callable[[dict[str, Any]], Any], b: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    return lambda row: bool(a(row)) or bool(b(row))


def _both(a: Callable[[dict[str, Any]], Any], b: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    return lambda row: bool(a(row)) and bool(b(row))


class _Parser:
    """expr := and ('or' and)*; and := unary ('and' unary)*; unary := 'not' unary | primary."""

    def __init__(self, text: str, schema: dict[str, str]) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0
        self.schema = schema

    def fail(self, why: str) -> ODataError:
        return ODataError(400, f"The query specified in the URI is not valid. {why}")

    def peek(self) -> _Tok | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise self.fail(f"Expression expected at the end of '{self.text}'.")
        self.pos += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.text != text:
            raise self.fail(f"'{text}' expected, found '{tok.text}'.")

    def parse(self) -> Callable[[dict[str, Any]], Any]:
        node, kind = self.expr()
        if kind != _BOOL:
            raise self.fail("The $filter expression must evaluate to a single boolean value.")
        if self.peek() is not None:
            raise self.fail(f"Syntax error: unexpected '{self.peek().text}' in '{self.text}'.")  # type: ignore[union-attr]
        return node

    def expr(self) -> tuple[Callable[[dict[str, Any]], Any], str]:
        left, kind = self.conj()
        while (tok := self.peek()) is not None and tok.kind == "name" and tok.text == "or":
            self.take()
            right, rkind = self.conj()
            self._need_bool(kind, rkind, "or")
            left = _either(left, right)
        return left, kind

    def conj(self) -> tuple[Callable[[dict[str, Any]], Any], str]:
        left, kind = self.unary()
        while (tok := self.peek()) is not None and tok.kind == "name" and tok.text == "and":
            self.take()
            right, rkind = self.unary()
            self._need_bool(kind, rkind, "and")
            left = _both(left, right)
        return left, kind

    def _need_bool(self, left: str, right: str, op: str) -> None:
        if left != _BOOL or right != _BOOL:
            raise self.fail(f"The operands of '{op}' must be boolean.")

    def unary(self) -> tuple[Callable[[dict[str, Any]], Any], str]:
        tok = self.peek()
        if tok is not None and tok.kind == "name" and tok.text == "not":
            self.take()
            inner, kind = self.unary()
            self._need_bool(kind, kind, "not")
            return (lambda row: not inner(row)), _BOOL
        left, kind = self.operand()
        tok = self.peek()
        if tok is not None and tok.kind == "name" and tok.text in _COMPARE:
            op = self.take().text
            right, rkind = self.operand()
            return self._compare(op, left, kind, right, rkind), _BOOL
        return left, kind

    def _compare(self, op: str, left: Any, lkind: str, right: Any, rkind: str) -> Callable[[dict[str, Any]], Any]:
        if "null" not in (lkind, rkind) and lkind != rkind:
            raise self.fail(
                f"A binary operator with incompatible types was detected. Found operand types 'Edm.{lkind}' and "
                f"'Edm.{rkind}' for operator kind '{op}'."
            )

        def compare(row: dict[str, Any]) -> bool:
            a, b = left(row), right(row)
            if op == "eq":
                return bool(a == b)
            if op == "ne":
                return bool(a != b)
            if a is None or b is None:
                return False
            return {"gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b}[op]

        return compare

    def operand(self) -> tuple[Callable[[dict[str, Any]], Any], str]:
        tok = self.take()
        if tok.kind == "punct" and tok.text == "(":
            node, kind = self.expr()
            self.expect(")")
            return node, kind
        if tok.kind == "guid":
            value = tok.text.lower()
            return (lambda row: value), _GUID
        if tok.kind == "string":
            text = tok.text[1:-1].replace("''", "'")
            return (lambda row: text), _STR
        if tok.kind == "number":
            number = int(tok.text)
            return (lambda row: number), _INT
        if tok.kind != "name":
            raise self.fail(f"Syntax error at '{tok.text}'.")
        word = tok.text
        if word in ("true", "false"):
            flag = word == "true"
            return (lambda row: flag), _BOOL
        if word == "null":
            return (lambda row: None), "null"
        nxt = self.peek()
        if nxt is not None and nxt.text == "(":
            return self.call(word)
        if word not in self.schema or self.schema[word] == "bytes":
            raise self.fail(f"Could not find a property named '{word}' on type 'db_file'.")
        kind = self.schema[word]
        return (lambda row: value_of(row, word, kind)), kind

    def call(self, function: str) -> tuple[Callable[[dict[str, Any]], Any], str]:
        if function not in _BOOL_FUNCS | _VALUE_FUNCS:
            raise self.fail(f"An unknown function with name '{function}' was found.")
        self.expect("(")
        args: list[tuple[Callable[[dict[str, Any]], Any], str]] = [self.expr()]
        while self.peek() is not None and self.peek().text == ",":  # type: ignore[union-attr]
            self.take()
            args.append(self.expr())
        self.expect(")")
        if any(kind != _STR for _, kind in args):
            raise self.fail(f"No function signature for the function with name '{function}' matches the arguments.")
        want = 1 if function in ("tolower", "toupper", "trim") else 2
        if len(args) != want:
            raise self.fail(f"The function '{function}' takes {want} arguments.")
        fns = [node for node, _ in args]
        if function == "tolower":
            return (lambda row: None if (v := fns[0](row)) is None else v.lower()), _STR
        if function == "toupper":
            return (lambda row: None if (v := fns[0](row)) is None else v.upper()), _STR
        if function == "trim":
            return (lambda row: None if (v := fns[0](row)) is None else v.strip()), _STR
        if function == "concat":
            return (lambda row: f"{fns[0](row) or ''}{fns[1](row) or ''}"), _STR

        def test(row: dict[str, Any]) -> bool:
            haystack, needle = fns[0](row), fns[1](row)
            if haystack is None or needle is None:
                return False
            if function == "contains":
                return needle in haystack
            if function == "startswith":
                return bool(haystack.startswith(needle))
            return bool(haystack.endswith(needle))

        return test, _BOOL


# -------------------------------------------------------------------------------------- state


@dataclass
class Faults:
    """Switches tests flip to provoke failures. Each `*_next_*` switch fires once."""

    fail_next_request: int | None = None
    """Answer the next request (any method, after authentication) with this status."""
    fail_next_post: int | None = None
    """Answer the next POST with this status (e.g. 500) without storing anything."""
    store_then_fail_next_post: bool = False
    """Store the next POSTed file, then answer 500 (a server failing after the insert)."""
    drop_next_download_after: int | None = None
    """Cut the connection of the next `GET DbFile(id)` after this many body bytes."""
    drop_next_post_response: bool = False
    """Store the next POSTed file, then cut the connection in the middle of the answer."""
    escape_slashes: bool = False
    """Write '/' in JSON strings as '\\/' (as some .NET serializers do)."""
    require_api_version: bool = False
    """Answer 404 when X-Api-Version is missing."""
    lowercase_next_link: bool = False
    """Spell the paging key `@odata.nextlink`, as the Paging guide's text does (its example says nextLink)."""
    ignore_prefer: bool = False
    """Answer POSTs with the whole record (base64 content included) even under `Prefer: return=minimal`."""


@dataclass
class LoggedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int = 0
    response_bytes: int = 0


@dataclass
class WelloSimulator:
    """The ASGI app plus its data. Call `seed()` for the contract data set."""

    username: str = "api-user"
    password: str = "s3cret:pass@word"
    domain: str = "acme"
    tables: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {name: {} for name in SCHEMAS})
    contents: dict[str, bytes] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    requests: list[LoggedRequest] = field(default_factory=list)
    _clock: datetime = field(default_factory=lambda: datetime(2025, 1, 6, 8, 0, tzinfo=UTC))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ----------------------------------------------------------------------------- data

    def now(self) -> str:
        """Strictly increasing timestamps, so "newest" is never a tie."""
        with self._lock:
            real = datetime.now(UTC)
            self._clock = max(real, self._clock + timedelta(milliseconds=1))
            return self._clock.isoformat().replace("+00:00", "Z")

    def add(self, entity_set: str, **values: Any) -> str:
        record_id = values.setdefault("id", str(uuid.uuid4()))
        values.setdefault("date_add", self.now()) if "date_add" in SCHEMAS[entity_set] else None
        self.tables[entity_set][record_id] = values
        return record_id

    def add_file(
        self, table: str, record_id: str, name: str, mime: str, data: bytes, *, file_id: str | None = None, **extra: Any
    ) -> str:
        file_id = file_id or str(uuid.uuid4())
        stamp = self.now()
        self.tables["DbFile"][file_id] = {
            "id": file_id,
            "db_table_id": None,
            "db_table_name": table,
            "id_in_table": record_id,
            "name": name,
            "description": None,
            "file_name": name,
            "image_width": None,
            "image_heigth": None,
            "mime_type": mime,
            "db_file_folder_id": None,
            "sales_organization_id": None,
            "file_type_name": None,
            "file_size": len(data),
            "user_notification": False,
            "is_archived": False,
            "date_add": stamp,
            "date_update": stamp,
            "modified_dateutc": stamp,
            **extra,
        }
        self.contents[file_id] = data
        return file_id

    def files_of(self, table: str, record_id: str) -> list[dict[str, Any]]:
        return [
            row
            for row in self.tables["DbFile"].values()
            if row["db_table_name"] == table and row["id_in_table"] == record_id
        ]

    def seed(self, case_table: str = "jobs") -> WelloSimulator:
        """The contract data: "Printer on fire" with files of several types, Alexander Wilson with a photo,
        John Best without. `case_table="task"` makes the printer and invoice cases Service Desk tasks."""
        cases, prefix = (TABLE_SETS[case_table], "JOB" if case_table == "jobs" else "TSK")
        self.add("Company", id=COMPANY_NORTHWIND, name="Northwind Traders")
        self.add(
            "Contact",
            id=CONTACT_ALEXANDER,
            first_name="Alexander",
            last_name="Wilson",
            email="alexander.wilson@example.com",
            company_id=COMPANY_NORTHWIND,
        )
        self.add("Contact", id=CONTACT_JOHN, first_name="John", last_name="Best", email=None, company_id=None)
        self.add("Contact", id=CONTACT_MARIA, first_name="Maria", last_name="Garcia", email=None, company_id=None)
        self.add(
            cases,
            id=JOB_PRINTER,
            reference=f"{prefix}-1001",
            subject="Printer on fire",
            contact_id=CONTACT_ALEXANDER,
            company_id=COMPANY_NORTHWIND,
        )
        self.add(cases, id=JOB_INVOICE, reference=f"{prefix}-1002", subject="Invoice shows the wrong VAT rate")
        self.add("Task", id=TASK_PORTAL, reference="TSK-7", subject="Portal login fails")
        self.add_file(case_table, JOB_PRINTER, "printer.png", "image/png", _demo.printer_png())
        self.add_file(
            case_table,
            JOB_PRINTER,
            "incident-report.pdf",
            "application/pdf",
            _demo.simple_pdf("Incident report", ["The printer caught fire.", "Nobody was hurt."]),
        )
        self.add_file(case_table, JOB_PRINTER, "event-log.csv", "text/csv", b"time,event\n09:00,smoke\n09:01,fire\n")
        self.add_file(
            case_table, JOB_PRINTER, "old-quote.pdf", "application/pdf", b"", file_id=FILE_ARCHIVED, is_archived=True
        )
        self.add_file(
            case_table, JOB_PRINTER, "diagnostics.json", "application/json", b'{"toner": "low", "fuser_temp_c": 412}\n'
        )
        self.add_file(
            case_table, JOB_INVOICE, "invoice.pdf", "application/pdf", _demo.simple_pdf("Invoice", ["VAT 21%"])
        )
        self.add_file(
            "contact", CONTACT_ALEXANDER, "alexander.png", "image/png", _demo.avatar_png(), file_id=FILE_ALEXANDER_PHOTO
        )
        self.add_file("contact", CONTACT_ALEXANDER, "notes.txt", "text/plain", b"Prefers calls in the morning.\n")
        self.add_file("task", TASK_PORTAL, "screenshot.png", "image/png", _demo.printer_png())
        return self

    # ------------------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        logged = LoggedRequest(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers={k.lower(): v for k, v in request.headers.items()},
        )
        self.requests.append(logged)
        try:
            response = await self._handle(request, logged)
        except ClientDisconnect:
            logged.status = 499
            return
        except ODataError as exc:
            response = exc.response()
        except _Dropped:
            return
        logged.status = response.status_code
        if not isinstance(response, StreamingResponse):
            logged.response_bytes = len(response.body)
        await response(scope, receive, send)

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, rest = decoded.partition(":")
        password, at, domain = rest.rpartition("@")
        return bool(at) and (user, password, domain) == (self.username, self.password, self.domain)

    async def _handle(self, request: Request, logged: LoggedRequest) -> Response:
        if not self._authorized(request):
            return JSONResponse(
                {"Message": "Authorization has been denied for this request."},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="Wello"'},
            )
        fail, self.faults.fail_next_request = self.faults.fail_next_request, None
        if fail is not None:
            raise ODataError(fail, f"Simulated failure {fail}.")
        if self.faults.require_api_version and not request.headers.get("x-api-version"):
            raise ODataError(404, "No HTTP resource was found that matches the request URI.")
        path = request.url.path
        match = re.fullmatch(r"/api/(?P<set>[A-Za-z]+)(?:\((?P<key>[^)]*)\))?/?", path)
        if not match or match["set"] not in SCHEMAS:
            raise ODataError(404, f"No HTTP resource was found that matches the request URI '{request.url}'.")
        entity_set, key = match["set"], match["key"]
        if key is not None:
            try:
                key = str(uuid.UUID(key))
            except ValueError:
                raise ODataError(400, f"The key value '{key}' is not a valid Edm.Guid.") from None
        method = request.method
        if method == "GET" and key is None:
            return self._list(request, entity_set)
        if method == "GET":
            return self._get(request, entity_set, key)
        if entity_set != "DbFile":
            raise ODataError(405, f"The requested resource does not support http method '{method}'.")
        if method == "POST" and key is None:
            return await self._post(request, logged)
        if method == "PUT" and key is not None:
            return await self._put(request, key)
        raise ODataError(405, f"The requested resource does not support http method '{method}'.")

    # --------------------------------------------------------------------------- queries

    def _select(self, request: Request, entity_set: str) -> list[str]:
        schema = SCHEMAS[entity_set]
        raw = request.query_params.get("$select")
        if raw is None:
            return list(schema)
        fields = [part.strip() for part in raw.split(",")]
        for name in fields:
            if name not in schema:
                raise ODataError(400, f"Could not find a property named '{name}' on type '{entity_set}'.")
        return fields

    def _int_option(self, request: Request, name: str) -> int | None:
        raw = request.query_params.get(name)
        if raw is None:
            return None
        if not raw.isdigit():
            raise ODataError(
                400, f"Invalid value '{raw}' for {name} query option found. It must be a non-negative integer."
            )
        return int(raw)

    def _list(self, request: Request, entity_set: str) -> Response:
        for option in request.query_params:
            if option.startswith("$") and option not in ("$filter", "$select", "$top", "$skip", "$orderby"):
                raise ODataError(400, f"The query parameter '{option}' is not supported.")
        schema = SCHEMAS[entity_set]
        rows = list(self.tables[entity_set].values())
        if (text := request.query_params.get("$filter")) is not None:
            test = _Parser(text, schema).parse()
            rows = [row for row in rows if test(row)]
        if (order := request.query_params.get("$orderby")) is not None:
            for part in reversed([p.strip() for p in order.split(",")]):
                name, _, direction = part.partition(" ")
                direction = direction.strip()
                if name not in schema or direction not in ("", "asc", "desc"):
                    raise ODataError(400, f"The $orderby clause '{part}' is not valid.")
                rows.sort(key=lambda row, n=name: value_of(row, n, schema[n]), reverse=direction == "desc")
        else:
            rows.sort(key=lambda row: row["id"])
        top = self._int_option(request, "$top")
        skip = self._int_option(request, "$skip") or 0
        window = rows[skip:] if top is None else rows[skip : skip + top]
        page = window[:PAGE_SIZE]
        fields = self._select(request, entity_set)
        body: dict[str, Any] = {
            "@odata.context": f"{request.base_url}api/$metadata#{entity_set}",
            "value": [self._shape(entity_set, row, fields) for row in page],
        }
        if len(window) > len(page):
            params = dict(request.query_params)
            params["$skip"] = str(skip + len(page))
            if top is not None:
                params["$top"] = str(top - len(page))
            key = "@odata.nextlink" if self.faults.lowercase_next_link else "@odata.nextLink"
            body[key] = f"{request.url.replace(query='')}?{urlencode(params)}"
        return self._json(body)

    def _shape(self, entity_set: str, row: dict[str, Any], fields: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        schema = SCHEMAS[entity_set]
        for name in fields:
            if name == "file_content":  # an archived file's content is flushed: an empty byte array
                out[name] = base64.b64encode(self.contents.get(row["id"], b"")).decode("ascii")
            else:
                out[name] = value_of(row, name, schema[name])
        return out

    def _json(self, body: Any, status: int = 200) -> Response:
        text = json.dumps(body)
        if self.faults.escape_slashes:
            text = text.replace("/", "\\/")
        return Response(text, status_code=status, media_type="application/json; charset=utf-8")

    def _get(self, request: Request, entity_set: str, key: str) -> Response:
        row = self.tables[entity_set].get(key)
        if row is None:
            raise ODataError(404, f"No {entity_set} found with id {key}.")
        fields = self._select(request, entity_set)
        if entity_set != "DbFile" or "file_content" not in fields:
            return self._json(self._shape(entity_set, row, fields))
        return StreamingResponse(self._stream_file(row, fields), media_type="application/json; charset=utf-8")

    async def _stream_file(self, row: dict[str, Any], fields: list[str]) -> AsyncIterator[bytes]:
        """The record as JSON with file_content in the middle, written in pieces (as a real server streams)."""
        drop_after, self.faults.drop_next_download_after = self.faults.drop_next_download_after, None
        before = [name for name in fields[: fields.index("file_content")]]
        after = [name for name in fields[fields.index("file_content") + 1 :]]
        escape = self.faults.escape_slashes

        def fix(text: str) -> str:
            return text.replace("/", "\\/") if escape else text

        head = fix(json.dumps(self._shape("DbFile", row, before))[:-1])
        head += (", " if before else "") + '"file_content": '
        tail = fix(json.dumps(self._shape("DbFile", row, after))[1:])
        tail = (", " + tail) if after else "}"
        data = self.contents.get(row["id"], b"")  # flushed (archived): an empty byte array, never null
        sent = 0

        def pieces() -> Iterator[bytes]:
            yield head.encode()
            yield b'"'
            step = 48 * 1024
            for start in range(0, len(data), step):
                yield fix(base64.b64encode(data[start : start + step]).decode("ascii")).encode()
            yield b'"'
            yield tail.encode()

        for piece in pieces():
            if drop_after is not None and sent + len(piece) > drop_after:
                yield piece[: max(0, drop_after - sent)]
                raise _Dropped()
            sent += len(piece)
            yield piece

    # ---------------------------------------------------------------------------- writes

    async def _body(self, request: Request) -> dict[str, Any]:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in ("application/json", "text/json"):
            # The documented request formats are JSON and XML; this simulator speaks only JSON.
            raise ODataError(
                415,
                f"The request entity's media type '{media or 'none'}' is not supported for this resource.",
            )
        raw = await request.body()  # raises ClientDisconnect if the client goes away mid-body
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) != len(raw):
            raise ClientDisconnect()
        try:
            body = json.loads(raw)
        except ValueError:
            raise ODataError(400, "The request entity's media type is not valid JSON.") from None
        if not isinstance(body, dict):
            raise ODataError(400, "The request is invalid: a db_file object is expected.")
        return body

    def _validate(self, body: dict[str, Any], *, creating: bool) -> dict[str, list[str]]:
        problems: dict[str, list[str]] = {}
        for name in body:
            if name not in DB_FILE_FIELDS:
                problems.setdefault(f"db_file.{name}", []).append(
                    f"Could not find member '{name}' on object of type 'db_file'."
                )
        if creating:
            for name in ("id", "name"):
                if not body.get(name):
                    problems.setdefault(f"db_file.{name}", []).append(f"The {name} field is required.")
        for name, limit in MAX_LENGTHS.items():
            value = body.get(name)
            if isinstance(value, str) and len(value.encode("utf-16-le")) // 2 > limit:
                problems.setdefault(f"db_file.{name}", []).append(
                    f"The field {name} must be a string with a maximum length of {limit}."
                )
        for name, kind in DB_FILE_FIELDS.items():
            value = body.get(name)
            if value is None:
                continue
            if kind == _GUID:
                try:
                    uuid.UUID(str(value))
                except ValueError:
                    problems.setdefault(f"db_file.{name}", []).append(
                        f"Error converting value '{value}' to type 'Guid'."
                    )
            if kind == _INT and (not isinstance(value, int) or isinstance(value, bool)):
                problems.setdefault(f"db_file.{name}", []).append(f"Could not convert '{value}' to integer.")
        return problems

    async def _post(self, request: Request, logged: LoggedRequest) -> Response:
        body = await self._body(request)
        fail, self.faults.fail_next_post = self.faults.fail_next_post, None
        if fail is not None:
            raise _canned_post_error(fail)
        problems = self._validate(body, creating=True)
        if problems:
            raise ODataError(400, "The request is invalid.", problems)
        file_id = str(uuid.UUID(body["id"]))
        if file_id in self.tables["DbFile"]:
            raise ODataError(409, f"A db_file with id {file_id} already exists.")
        table = body.get("db_table_name")
        if table is not None:
            if table not in LINKABLE_TABLES:
                raise ODataError(422, f"db_table_name '{table}' is not a table files can be linked to.")
            target = TABLE_SETS.get(table)
            linked = body.get("id_in_table")
            if not linked or (target is not None and str(uuid.UUID(linked)) not in self.tables[target]):
                raise ODataError(422, f"id_in_table: no {table} record with id '{linked}'.")
        content_text = body.pop("file_content", None)
        try:
            data = b"" if content_text is None else base64.b64decode(content_text, validate=True)
        except (binascii.Error, TypeError):
            raise ODataError(
                400, "The request is invalid.", {"db_file.file_content": ["Invalid base64 content."]}
            ) from None
        extra = {k: v for k, v in body.items() if k not in ("id", "db_table_name", "id_in_table", "name", "mime_type")}
        extra.pop("file_size", None)  # filled in from the content
        extra.pop("file_name", None)
        self.add_file(
            table,
            str(uuid.UUID(body["id_in_table"])) if body.get("id_in_table") else None,  # type: ignore[arg-type]
            body["name"],
            body.get("mime_type"),  # type: ignore[arg-type]
            data,
            file_id=file_id,
            **extra,
        )
        self.tables["DbFile"][file_id]["file_name"] = body.get("file_name")
        if self.faults.store_then_fail_next_post:
            self.faults.store_then_fail_next_post = False
            raise ODataError(500, "An error has occurred.")
        if self.faults.drop_next_post_response:
            self.faults.drop_next_post_response = False
            return _BrokenResponse()
        if "return=minimal" in request.headers.get("prefer", "") and not self.faults.ignore_prefer:
            return self._json({"id": file_id}, status=201)
        row = self.tables["DbFile"][file_id]
        return self._json(self._shape("DbFile", row, list(DB_FILE_FIELDS)), status=201)

    async def _put(self, request: Request, key: str) -> Response:
        body = await self._body(request)
        row = self.tables["DbFile"].get(key)
        if row is None:
            raise ODataError(404, f"No DbFile found with id {key}.")
        problems = self._validate(body, creating=False)
        if problems:
            raise ODataError(400, "The request is invalid.", problems)
        content_text = body.pop("file_content", None)
        for name, value in body.items():
            if name not in ("id", "file_type_name", "modified_dateutc"):
                row[name] = value
        if content_text is not None:
            self.contents[key] = base64.b64decode(content_text)
            row["file_size"] = len(self.contents[key])
        if row.get("is_archived"):
            self.contents.pop(key, None)  # "deleted (content flushed)"
        row["date_update"] = row["modified_dateutc"] = self.now()
        if "return=minimal" in request.headers.get("prefer", ""):
            return Response(status_code=204)
        return self._json(self._shape("DbFile", row, [n for n in DB_FILE_FIELDS if n != "file_content"]))


def _canned_post_error(status: int) -> ODataError:
    """What `fail_next_post` answers: the documented meaning of each status, with a body like Wello's."""
    if status == 400:
        return ODataError(
            400, "The request is invalid.", {"db_file.description": ["Simulated validation failure on description."]}
        )
    if status == 409:
        return ODataError(409, "Simulated conflict with the current state of the db_file.")
    if status == 422:
        return ODataError(422, "Simulated foreign key failure: id_in_table does not match a record.")
    if status == 403:
        return ODataError(403, "Simulated refusal: this API user may not add files.")
    return ODataError(status, "An error has occurred.")


class _Dropped(Exception):
    """Raised inside a streamed body to cut the connection (the ASGI server aborts the response)."""


class _BrokenResponse(Response):
    """Headers and the start of a body, then the connection is cut (only meaningful over a socket)."""

    def __init__(self) -> None:
        super().__init__(b"", status_code=201)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"100")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"id": ', "more_body": True})
        raise _Dropped()


# ---------------------------------------------------------------------------------- serving


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run `app` with uvicorn on a loopback port in a background thread; yield its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this: without it, uvicorn on a pre-bound socket answers a second request on
    # a kept-alive connection ~40 ms late (Nagle against the client's delayed ACK).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="critical", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the Wello simulator did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def main() -> None:
    """`python -m tests.simulators.wello`: serve the seeded simulator, print its URL, run until stdin closes."""
    with serve(WelloSimulator().seed()) as url:
        print(url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
