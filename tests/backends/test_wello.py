"""The Wello backend on its own, against the Wello simulator (in-process via ASGITransport, or over a socket)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from crm_mcp.backends import vendor_class
from crm_mcp.backends.base import BackendContext, Upload
from crm_mcp.backends.wello import ContentScanner, WelloBackend, WelloSettings, shorten_name
from crm_mcp.errors import (
    AuthenticationError,
    BackendError,
    ConflictError,
    CrmError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    TooLargeError,
)
from tests.simulators import wello as simulator
from tests.simulators.wello import WelloSimulator, serve

pytestmark = pytest.mark.anyio

LIMIT = 5_000_000
MISSING = "6f1c2a4e-0000-4000-8000-000000000000"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def settings(url: str, sim: WelloSimulator, **overrides: Any) -> WelloSettings:
    values: dict[str, Any] = {
        "vendor": "wello",
        "url": url,
        "username": sim.username,
        "password": sim.password,
        "domain": sim.domain,
        **overrides,
    }
    return WelloSettings(**values)


def make(
    sim: WelloSimulator,
    tmp_path: Path,
    *,
    limit: int = LIMIT,
    transport: httpx.AsyncBaseTransport | None = None,
    **kw: Any,
) -> WelloBackend:
    context = BackendContext(
        home=tmp_path, max_transfer_bytes=limit, transport=transport or httpx.ASGITransport(app=sim)
    )
    return WelloBackend("wello", settings("https://wello.example/api", sim, **kw), context)


@pytest.fixture
def sim() -> WelloSimulator:
    return WelloSimulator().seed()


@pytest.fixture
async def crm(sim: WelloSimulator, tmp_path: Path) -> AsyncIterator[WelloBackend]:
    async with make(sim, tmp_path) as backend:
        yield backend


async def _chunks(data: bytes, size: int = 7_777) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def upload(data: bytes, name: str = "a.bin", mime: str = "application/octet-stream", size: int | None = None) -> Upload:
    return Upload(name=name, mime_type=mime, size=len(data) if size is None else size, chunks=_chunks(data))


async def read(backend: WelloBackend, file_id: str) -> bytes:
    async with backend.open_file(file_id) as download:
        return b"".join([chunk async for chunk in download.chunks])


async def listing(backend: WelloBackend, case_id: str, limit: int = 200) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = await backend.list_case_files(case_id, limit=limit, cursor=cursor)
        ids += [entry.file_id for entry in page.files]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def live_files(sim: WelloSimulator, table: str, record_id: str) -> list[dict[str, Any]]:
    return [row for row in sim.files_of(table, record_id) if not row.get("is_archived")]


# ------------------------------------------------------------------------------------- settings


def test_settings_are_strict_and_hide_the_password(sim: WelloSimulator) -> None:
    good = settings("https://x.wello.solutions", sim)
    assert sim.password not in repr(good)
    assert vendor_class("wello") is WelloBackend
    with pytest.raises(ValidationError):
        settings("https://x.wello.solutions", sim, tenant="x")
    with pytest.raises(ValidationError):
        settings("ftp://x.wello.solutions", sim)
    with pytest.raises(ValidationError):
        settings("https://x.wello.solutions", sim, case_table="tickets")
    with pytest.raises(ValidationError):
        settings("https://x.wello.solutions", sim, username="a:b")
    with pytest.raises(ValidationError, match="without '@'"):
        settings("https://x.wello.solutions", sim, domain="user@acme")


async def test_opening_sends_nothing_and_check_sends_one_request(sim: WelloSimulator, tmp_path: Path) -> None:
    async with make(sim, tmp_path, api_version="2") as backend:
        assert sim.requests == []
        description = await backend.check()
    assert len(sim.requests) == 1
    assert "api-user@acme" in description
    assert sim.password not in description


async def test_every_request_carries_basic_auth_with_the_domain(crm: WelloBackend, sim: WelloSimulator) -> None:
    await crm.list_case_files(simulator.JOB_PRINTER, limit=5, cursor=None)
    expected = "Basic " + base64.b64encode(b"api-user:s3cret:pass@word@acme").decode()
    assert sim.requests
    assert all(request.headers["authorization"] == expected for request in sim.requests)
    assert all("x-api-version" not in request.headers for request in sim.requests)


async def test_api_version_is_sent_when_configured(sim: WelloSimulator, tmp_path: Path) -> None:
    sim.faults.require_api_version = True
    async with make(sim, tmp_path) as backend:
        with pytest.raises(BackendError, match="api_version"):
            await backend.check()
    async with make(sim, tmp_path, api_version="1") as backend:
        await backend.check()
    assert sim.requests[-1].headers["x-api-version"] == "1"


@pytest.mark.parametrize("wrong", [{"password": "nope-secret"}, {"domain": "other"}, {"username": "api-user2"}])
async def test_wrong_credentials_are_a_clear_authentication_error(
    sim: WelloSimulator, tmp_path: Path, wrong: dict[str, str]
) -> None:
    context = BackendContext(home=tmp_path, max_transfer_bytes=LIMIT, transport=httpx.ASGITransport(app=sim))
    async with WelloBackend("wello", settings("https://w.example", sim, **wrong), context) as backend:
        with pytest.raises(AuthenticationError) as raised:
            await backend.list_case_files(simulator.JOB_PRINTER, limit=5, cursor=None)
    message = str(raised.value)
    assert "401" in message and "username, password and domain" in message
    assert "Authorization has been denied" in message  # Wello's own words are passed on
    assert "nope-secret" not in message and sim.password not in message


async def test_simulator_wants_the_domain_form_of_basic_auth(sim: WelloSimulator) -> None:
    """`username:password` alone (ordinary Basic auth) is refused: Wello needs `username:password@domain`."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="https://w.example/api/") as http:
        for user in (b"api-user:s3cret:pass@word", b"api-user@acme:s3cret:pass@word", b"api-user:s3cret:pass@word@"):
            header = {"Authorization": "Basic " + base64.b64encode(user).decode()}
            assert (await http.get("Jobs", headers=header)).status_code == 401, user
        good = {"Authorization": "Basic " + base64.b64encode(b"api-user:s3cret:pass@word@acme").decode()}
        assert (await http.get("Jobs", headers=good)).status_code == 200


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (400, BackendError, "OData"),
        (403, PermissionDeniedError, "administrator"),
        (404, BackendError, "api_version"),
        (302, BackendError, "redirect"),
        (500, BackendError, "try again"),  # a 503 is retried (see test_a_passing_503_is_retried)
    ],
)
async def test_query_errors_become_clear_errors(
    crm: WelloBackend, sim: WelloSimulator, status: int, error: type, words: str
) -> None:
    sim.faults.fail_next_request = status
    with pytest.raises(error) as raised:
        await crm.find_records("case", "printer", limit=5)
    assert words in str(raised.value)
    assert f"HTTP {status}" in str(raised.value)
    assert not isinstance(raised.value, InvalidInputError)


@pytest.mark.parametrize("status", [400, 401, 403, 409, 500])
async def test_an_error_body_that_echoes_the_request_reveals_no_secret(tmp_path: Path, status: int) -> None:
    """A proxy or debug page may repeat the request (Authorization header included) and set a cookie."""
    sim = WelloSimulator()

    def echo(request: httpx.Request) -> httpx.Response:
        text = f"{request.method} {request.url}\n" + "\n".join(f"{k}: {v}" for k, v in request.headers.items())
        body = {"Message": "Bad thing.", "ExceptionMessage": text} if status == 400 else None
        return httpx.Response(
            status,
            **({"json": body} if body else {"text": text}),
            headers={"Set-Cookie": "ASP.NET_SessionId=cookie-4b1f88ae; path=/"},
        )

    context = BackendContext(home=tmp_path, max_transfer_bytes=LIMIT, transport=httpx.MockTransport(echo))
    messages = []
    async with WelloBackend("wello", settings("https://w.example", sim), context) as backend:
        for _ in range(2):  # the second request carries the cookie the first answer set
            with pytest.raises(CrmError) as raised:
                await backend.check()
            messages.append(str(raised.value))
    assert f"HTTP {status}" in messages[0] and "ASP.NET_SessionId=[redacted]" in messages[1]
    token = base64.b64encode(f"{sim.username}:{sim.password}@{sim.domain}".encode()).decode()
    for message in messages:
        assert "[redacted]" in message and "Basic" in message  # the echo was quoted, the secrets were not
        assert sim.password not in message and token not in message and token[:40] not in message
        assert "cookie-4b1f88ae" not in message


@pytest.mark.parametrize("bad", ["JOB-1", "", "1234", "'; drop", "6f1c2a4e-0000-4000-8000-00000000000"])
async def test_malformed_ids_are_refused_before_any_request(crm: WelloBackend, sim: WelloSimulator, bad: str) -> None:
    with pytest.raises(InvalidInputError, match="not a valid id"):
        await crm.list_case_files(bad, limit=5, cursor=None)
    with pytest.raises(InvalidInputError, match="not a valid id"):
        async with crm.open_file(bad):
            pass
    with pytest.raises(InvalidInputError, match="not a valid id"):
        await crm.get_contact_photo(bad)
    with pytest.raises(InvalidInputError, match="not a valid id"):
        async with crm.open_contact_photo(bad):
            pass
    with pytest.raises(InvalidInputError, match="not a valid id"):
        await crm.upload_attachment("contact", bad, upload(b"x"))
    with pytest.raises(InvalidInputError, match="not a valid id"):
        await crm.upload_attachment("account", bad, upload(b"x"))
    with pytest.raises(InvalidInputError, match="not a valid id"):
        await crm.upload_attachment("case", bad, upload(b"x"))
    with pytest.raises(InvalidInputError, match="not a valid id"):
        await crm.bind_photo(bad, upload(PNG, "p.png", "image/png"))
    assert sim.requests == []


# -------------------------------------------------------------------------------------- listing


async def test_listing_never_transfers_file_content(crm: WelloBackend, sim: WelloSimulator) -> None:
    page = await crm.list_case_files(simulator.JOB_PRINTER, limit=50, cursor=None)
    assert len(page.files) == 4
    lists = [r for r in sim.requests if r.path == "/api/DbFile"]
    assert lists
    for request in lists:
        assert "file_content" not in request.query["$select"]
        assert request.query["$filter"] == (
            f"db_table_name eq 'jobs' and id_in_table eq {simulator.JOB_PRINTER}"
        ) or request.query["$filter"].startswith("id eq ")
    # and nothing in any answer carried content
    assert sum(r.response_bytes for r in sim.requests) < 10_000


async def test_listing_checks_the_case_only_when_no_row_came_back(crm: WelloBackend, sim: WelloSimulator) -> None:
    """A file row names its case, so a listing with rows needs no lookup of the case first; an empty one
    still tells an existing case without files from a missing case."""
    page = await crm.list_case_files(simulator.JOB_PRINTER, limit=50, cursor=None)
    assert page.files
    assert {r.path for r in sim.requests} == {"/api/DbFile"}
    empty_case = sim.add(simulator.TABLE_SETS["jobs"], reference="JOB-1003", subject="Nothing attached yet")
    sim.requests.clear()
    empty = await crm.list_case_files(empty_case, limit=50, cursor=None)
    assert (empty.files, empty.next_cursor) == ([], None)
    assert [r.path for r in sim.requests] == ["/api/DbFile", "/api/Jobs"]
    with pytest.raises(NotFoundError, match="not found"):
        await crm.list_case_files("6f1c2a4e-0000-4000-8000-000000000000", limit=5, cursor=None)


async def test_wellos_defaults_instead_of_nulls_are_understood(crm: WelloBackend, sim: WelloSimulator) -> None:
    """Wello stores no nulls: an unset text is "", an unset GUID all zeros, an unset date 1980-01-01."""
    file_id = sim.add_file("jobs", simulator.JOB_PRINTER, "plain", "", b"abc", file_name=None, date_add=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="https://w.example/api/") as http:
        auth = {"Authorization": "Basic " + base64.b64encode(b"api-user:s3cret:pass@word@acme").decode()}
        row = (await http.get(f"DbFile({file_id})", headers=auth)).json()
    assert (row["file_name"], row["mime_type"], row["description"]) == ("", "", "")
    assert row["db_file_folder_id"] == simulator.EMPTY_GUID and row["date_add"].startswith("1980-01-01")
    assert None not in row.values()
    (entry,) = [
        f
        for f in (await crm.list_case_files(simulator.JOB_PRINTER, limit=50, cursor=None)).files
        if f.file_id == file_id
    ]
    assert (entry.name, entry.mime_type, entry.size) == ("plain", "application/octet-stream", 3)
    assert entry.created_at is not None and entry.created_at.year == 1980
    assert await read(crm, file_id) == b"abc"
    # An unset file_size is 0 on Wello: that is "unknown", not "empty".
    unsized = sim.add_file("jobs", simulator.JOB_PRINTER, "unsized.txt", "text/plain", b"12345", file_size=None)
    listed = {f.file_id: f for f in (await crm.list_case_files(simulator.JOB_PRINTER, limit=50, cursor=None)).files}
    assert listed[unsized].size is None
    async with crm.open_file(unsized) as download:
        assert download.size is None
        assert b"".join([chunk async for chunk in download.chunks]) == b"12345"


async def test_archived_files_are_not_listed(crm: WelloBackend) -> None:
    ids = await listing(crm, simulator.JOB_PRINTER)
    assert simulator.FILE_ARCHIVED not in ids
    with pytest.raises(NotFoundError):
        async with crm.open_file(simulator.FILE_ARCHIVED):
            pass


async def test_a_120_file_job_is_listed_completely_across_pages(crm: WelloBackend, sim: WelloSimulator) -> None:
    expected = {
        sim.add_file("jobs", simulator.JOB_INVOICE, f"f{i:03}.txt", "text/plain", f"{i}".encode()) for i in range(119)
    } | {row["id"] for row in sim.files_of("jobs", simulator.JOB_INVOICE)}
    assert len(expected) == 120
    # One big page: the server gives at most 20 rows per answer, the backend follows on.
    big = await crm.list_case_files(simulator.JOB_INVOICE, limit=200, cursor=None)
    assert {entry.file_id for entry in big.files} == expected
    assert len(big.files) == 120
    assert big.next_cursor is None
    # Small pages through the cursor: every file exactly once, in the same order.
    for limit in (7, 20, 119):
        ids = await listing(crm, simulator.JOB_INVOICE, limit=limit)
        assert ids == [entry.file_id for entry in big.files]
    # Never more than Wello's page of 20 asked for, and no answer carried file content.
    listed = [r for r in sim.requests if r.path == "/api/DbFile" and "id_in_table" in r.query.get("$filter", "")]
    assert listed and all(1 <= int(r.query["$top"]) <= 20 for r in listed)
    assert all("file_content" not in r.query["$select"] for r in listed)


async def test_listing_is_complete_when_the_next_link_is_spelled_nextlink(
    crm: WelloBackend, sim: WelloSimulator
) -> None:
    """The Paging guide writes the key as `@odata.nextlink` in its text and `@odata.nextLink` in its example."""
    expected = {row["id"] for row in sim.files_of("jobs", simulator.JOB_INVOICE)} | {
        sim.add_file("jobs", simulator.JOB_INVOICE, f"g{i:02}.txt", "text/plain", b"g") for i in range(44)
    }
    sim.faults.lowercase_next_link = True
    page = await crm.list_case_files(simulator.JOB_INVOICE, limit=100, cursor=None)
    assert {entry.file_id for entry in page.files} == expected
    assert page.next_cursor is None


async def test_missing_case_is_not_found_and_bad_cursor_refused(crm: WelloBackend) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        await crm.list_case_files(MISSING, limit=5, cursor=None)
    with pytest.raises(InvalidInputError, match="cursor"):
        await crm.list_case_files(simulator.JOB_PRINTER, limit=5, cursor="garbage!")
    page = await crm.list_case_files(simulator.JOB_PRINTER, limit=2, cursor=None)
    assert page.next_cursor is not None
    with pytest.raises(InvalidInputError, match="cursor"):
        await crm.list_case_files(simulator.JOB_INVOICE, limit=2, cursor=page.next_cursor)


async def test_cases_can_be_service_desk_tasks(sim: WelloSimulator, tmp_path: Path) -> None:
    async with make(sim, tmp_path, case_table="task") as backend:
        page = await backend.list_case_files(simulator.TASK_PORTAL, limit=10, cursor=None)
        assert [entry.name for entry in page.files] == ["screenshot.png"]
        records = await backend.find_records("case", "portal", limit=5)
        assert [record.id for record in records] == [simulator.TASK_PORTAL]
        with pytest.raises(NotFoundError):
            await backend.list_case_files(simulator.JOB_PRINTER, limit=10, cursor=None)
        entry = await backend.upload_attachment("case", simulator.TASK_PORTAL, upload(b"log", "log.txt", "text/plain"))
        with pytest.raises(NotFoundError, match="task"):
            await backend.upload_attachment("case", simulator.JOB_PRINTER, upload(b"x"))
    row = sim.tables["DbFile"][entry.file_id]
    assert (row["db_table_name"], row["id_in_table"]) == ("task", simulator.TASK_PORTAL)
    listings = [r.query["$filter"] for r in sim.requests if "id_in_table" in r.query.get("$filter", "")]
    assert listings and all(f.startswith("db_table_name eq 'task' and id_in_table eq ") for f in listings)
    assert {r.path for r in sim.requests if r.query.get("$filter", "").startswith("id eq ")} >= {"/api/Task"}
    assert "/api/Jobs" not in {r.path for r in sim.requests}


# ------------------------------------------------------------------------------------ downloads


async def test_download_decodes_file_content(crm: WelloBackend, sim: WelloSimulator) -> None:
    for row in live_files(sim, "jobs", simulator.JOB_PRINTER):
        assert await read(crm, row["id"]) == sim.contents[row["id"]]


async def test_download_survives_escaped_slashes(crm: WelloBackend, sim: WelloSimulator) -> None:
    data = bytes(range(256)) * 50  # base64 of this has many '/' characters
    file_id = sim.add_file("jobs", simulator.JOB_PRINTER, "bytes.bin", "application/octet-stream", data)
    sim.faults.escape_slashes = True
    assert await read(crm, file_id) == data


async def test_missing_file_is_not_found(crm: WelloBackend) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        async with crm.open_file(MISSING):
            pass


@pytest.mark.parametrize("piece", [1, 3, 7, 4096])
def test_content_scanner_finds_the_top_level_value_in_any_pieces(piece: int) -> None:
    data = random.Random(piece).randbytes(3000)
    encoded = base64.b64encode(data).decode().replace("/", "\\/")
    body = (
        '{"id": "x", "name": "file_content \\" tricky", "nested": {"file_content": "AAAA"}, '
        f'"list": [1, {{"file_content": null}}], "file_content" : "{encoded}", "after": "z"}}'
    ).encode()
    scanner = ContentScanner()
    out = b"".join(scanner.feed(body[i : i + piece]) for i in range(0, len(body), piece))
    assert out == data
    assert scanner.done


@pytest.mark.parametrize("piece", [1, 2, 5, 6, 7, 4096])
def test_content_scanner_undoes_any_json_escape_of_base64(piece: int) -> None:
    """JSON may write any character as `\\u00XX` (some serializers do so for '+' or '/'), and MIME-style
    base64 may carry escaped line breaks; escapes cut by a piece boundary are completed by the next piece."""
    data = random.Random(piece).randbytes(999)
    encoded = base64.b64encode(data).decode()
    escaped = "".join(
        f"\\u{ord(char):04X}" if i % 3 == 0 else ("\\/" if char == "/" else char) for i, char in enumerate(encoded)
    )
    escaped = escaped[:40] + "\\r\\n" + escaped[40:80] + "\\u000a" + escaped[80:]
    body = ('{"id": "x", "file_content": "' + escaped + '"}').encode()
    scanner = ContentScanner()
    out = b"".join(scanner.feed(body[i : i + piece]) for i in range(0, len(body), piece))
    assert out == data
    assert scanner.done


@pytest.mark.parametrize("bad", ['"QUJD\\u0041\\"', '"QUJD\\t"', '"QU\\u0000JD"', '"QUJ\\u00"'])
def test_content_scanner_refuses_escapes_that_are_not_base64(bad: str) -> None:
    body = ('{"file_content": ' + bad + "}").encode()
    scanner = ContentScanner()
    with pytest.raises(BackendError, match=r"escape|base64"):
        b"".join(scanner.feed(body[i : i + 1]) for i in range(len(body)))


@pytest.mark.parametrize("piece", [1, 2, 3, 4, 5, 4096])
def test_content_scanner_refuses_padding_before_the_end_in_any_pieces(piece: int) -> None:
    """`QQ==` then more base64 is not one file: it must fail, not decode as "A" + the rest."""
    body = b'{"file_content": "QUJDQQ==QUJD"}'
    scanner = ContentScanner()
    with pytest.raises(BackendError, match="not valid base64"):
        b"".join(scanner.feed(body[i : i + piece]) for i in range(0, len(body), piece))


@pytest.mark.parametrize("piece", [1, 2, 3, 4096])
def test_content_scanner_accepts_a_last_group_without_padding(piece: int) -> None:
    body = b'{"file_content": "QUJDQUI"}'
    scanner = ContentScanner()
    assert b"".join(scanner.feed(body[i : i + piece]) for i in range(0, len(body), piece)) == b"ABCAB"
    assert scanner.done and scanner.decoded == 5


def test_content_scanner_handles_null_and_refuses_garbage() -> None:
    scanner = ContentScanner()
    assert scanner.feed(b'{"id": 1, "file_content": null}') == b""
    assert scanner.done and scanner.found
    with pytest.raises(BackendError):
        ContentScanner().feed(b'{"file_content": "ab$d"}')


async def test_a_connection_cut_mid_download_is_an_error(sim: WelloSimulator, tmp_path: Path) -> None:
    data = random.Random(3).randbytes(400_000)
    file_id = sim.add_file("jobs", simulator.JOB_PRINTER, "big.bin", "application/octet-stream", data)
    sim.faults.drop_next_download_after = 200_000
    with serve(sim) as url:
        context = BackendContext(home=tmp_path, max_transfer_bytes=LIMIT)
        async with WelloBackend("wello", settings(url, sim), context) as backend:
            with pytest.raises(BackendError, match=r"broke|incomplete"):
                await read(backend, file_id)
            assert await read(backend, file_id) == data


async def test_download_over_the_limit_is_refused(sim: WelloSimulator, tmp_path: Path) -> None:
    file_id = sim.add_file("jobs", simulator.JOB_PRINTER, "big.bin", "application/octet-stream", b"x" * 5000)
    async with make(sim, tmp_path, limit=4000) as backend:
        with pytest.raises(TooLargeError):
            async with backend.open_file(file_id):
                pass


# -------------------------------------------------------------------------------------- uploads


async def test_upload_round_trips_with_minimal_return_and_file_size(crm: WelloBackend, sim: WelloSimulator) -> None:
    data = random.Random(1).randbytes(100_001)
    entry = await crm.upload_attachment("case", simulator.JOB_PRINTER, upload(data, "r.bin"))
    post = next(r for r in sim.requests if r.method == "POST")
    assert post.headers["prefer"] == "return=minimal"
    assert int(post.headers["content-length"]) > len(data) * 4 // 3
    assert post.response_bytes < 100
    row = sim.tables["DbFile"][entry.file_id]
    assert (row["db_table_name"], row["id_in_table"], row["file_size"]) == ("jobs", simulator.JOB_PRINTER, len(data))
    assert await read(crm, entry.file_id) == data
    assert entry.file_id in await listing(crm, simulator.JOB_PRINTER)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5])
async def test_upload_of_tiny_sizes(crm: WelloBackend, size: int) -> None:
    data = bytes(range(size))
    entry = await crm.upload_attachment("case", simulator.JOB_PRINTER, upload(data, "t.bin"))
    assert entry.size == size
    assert await read(crm, entry.file_id) == data


async def test_uploads_to_contacts_and_companies(crm: WelloBackend, sim: WelloSimulator) -> None:
    entry = await crm.upload_attachment("contact", simulator.CONTACT_JOHN, upload(b"hello", "h.txt", "text/plain"))
    assert sim.tables["DbFile"][entry.file_id]["db_table_name"] == "contact"
    entry = await crm.upload_attachment("account", simulator.COMPANY_NORTHWIND, upload(b"hi", "h.txt", "text/plain"))
    assert sim.tables["DbFile"][entry.file_id]["db_table_name"] == "company"
    with pytest.raises(NotFoundError, match="company"):
        await crm.upload_attachment("account", MISSING, upload(b"hi"))


async def test_long_names_are_shortened_keeping_the_extension(crm: WelloBackend, sim: WelloSimulator) -> None:
    long = "Quarterly maintenance report for the north building " * 4 + ".pdf"
    entry = await crm.upload_attachment("case", simulator.JOB_PRINTER, upload(b"%PDF-1.4", long, "application/pdf"))
    assert entry.name.endswith(".pdf")
    assert 90 <= len(entry.name) <= 100
    row = sim.tables["DbFile"][entry.file_id]
    assert row["name"] == row["file_name"] == entry.name
    listed = await crm.list_case_files(simulator.JOB_PRINTER, limit=50, cursor=None)
    assert entry.name in [file.name for file in listed.files]


async def test_a_mime_type_over_wellos_100_characters_is_stored_generic(crm: WelloBackend, sim: WelloSimulator) -> None:
    long_type = "application/vnd.example." + "x" * 90  # 114 characters: Wello would answer 400
    entry = await crm.upload_attachment("case", simulator.JOB_PRINTER, upload(b"data", "d.bin", long_type))
    assert entry.mime_type == "application/octet-stream"
    assert sim.tables["DbFile"][entry.file_id]["mime_type"] == "application/octet-stream"
    assert all(r.status < 400 for r in sim.requests)


def test_shorten_name_counts_like_dotnet() -> None:
    assert shorten_name("short.txt") == "short.txt"
    emoji = "😀" * 60 + ".png"  # 124 UTF-16 units
    short = shorten_name(emoji)
    assert short.endswith(".png")
    assert len(short.encode("utf-16-le")) // 2 <= 100
    assert len(shorten_name("x" * 150)) == 100
    odd = shorten_name("y" * 120 + "." + "e" * 40)  # an "extension" this long is not kept
    assert len(odd) == 100


async def test_simulator_accepts_only_json_bodies(sim: WelloSimulator) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="https://w.example/api/") as http:
        auth = {"Authorization": "Basic " + base64.b64encode(b"api-user:s3cret:pass@word@acme").decode()}
        body = json.dumps(
            {"id": MISSING, "name": "a.txt", "db_table_name": "jobs", "id_in_table": simulator.JOB_PRINTER}
        )
        plain = await http.post("DbFile", content=body, headers={**auth, "Content-Type": "text/plain"})
        assert plain.status_code == 415 and "media type" in plain.json()["Message"]
        assert MISSING not in sim.tables["DbFile"]
        ok = await http.post("DbFile", content=body, headers={**auth, "Content-Type": "text/json; charset=utf-8"})
        assert ok.status_code == 201


async def test_simulator_refuses_a_name_over_100_characters(sim: WelloSimulator) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="https://w.example/api/") as http:
        auth = {"Authorization": "Basic " + base64.b64encode(b"api-user:s3cret:pass@word@acme").decode()}
        body = {"id": MISSING, "name": "n" * 101, "db_table_name": "jobs", "id_in_table": simulator.JOB_PRINTER}
        response = await http.post("DbFile", json=body, headers=auth)
        assert response.status_code == 400
        assert "maximum length of 100" in json.dumps(response.json())
        bad = await http.get(
            "DbFile", params={"$filter": f"db_table_name eq 'jobs' AND id_in_table eq {MISSING}"}, headers=auth
        )
        assert bad.status_code == 400
        quoted = await http.get("DbFile", params={"$filter": f"id_in_table eq '{MISSING}'"}, headers=auth)
        assert quoted.status_code == 400
        anonymous = await http.get("DbFile")
        assert anonymous.status_code == 401 and anonymous.json()["Message"]


@pytest.mark.parametrize(
    ("status", "error", "said"),
    [
        (500, BackendError, "try again later"),
        (400, InvalidInputError, "db_file.description: Simulated validation failure on description"),
        (422, InvalidInputError, "Simulated foreign key failure: id_in_table does not match a record"),
        (403, PermissionDeniedError, "Simulated refusal: this API user may not add files"),
        (409, ConflictError, "Simulated conflict with the current state of the db_file"),
        (404, BackendError, "api_version"),
    ],
)
async def test_failed_post_leaves_nothing(
    crm: WelloBackend, sim: WelloSimulator, status: int, error: type, said: str
) -> None:
    before = await listing(crm, simulator.JOB_PRINTER)
    sim.faults.fail_next_post = status
    with pytest.raises(error) as raised:
        await crm.upload_attachment("case", simulator.JOB_PRINTER, upload(b"data", "x.txt", "text/plain"))
    # The status, what Wello said (its error body) and what was being done all reach the tool error.
    assert type(raised.value) is error  # e.g. a 404 on POST is not "job not found": the job was just checked
    message = str(raised.value)
    assert f"HTTP {status}" in message and said in message and "'x.txt'" in message
    assert await listing(crm, simulator.JOB_PRINTER) == before


async def test_server_failing_after_the_insert_leaves_nothing_listed(crm: WelloBackend, sim: WelloSimulator) -> None:
    before = await listing(crm, simulator.JOB_PRINTER)
    sim.faults.store_then_fail_next_post = True
    with pytest.raises(BackendError, match="500"):
        await crm.upload_attachment("case", simulator.JOB_PRINTER, upload(b"data", "x.txt", "text/plain"))
    assert await listing(crm, simulator.JOB_PRINTER) == before
    # DELETE is not documented (405 here), so the record was archived: content flushed, not listed.
    assert [r.method for r in sim.requests if r.path.startswith("/api/DbFile(")] == ["DELETE", "PUT"]


async def test_connection_lost_after_the_insert_leaves_nothing_listed(sim: WelloSimulator, tmp_path: Path) -> None:
    sim.faults.drop_next_post_response = True
    with serve(sim) as url:
        async with WelloBackend("wello", settings(url, sim), BackendContext(tmp_path, LIMIT)) as backend:
            before = await listing(backend, simulator.JOB_PRINTER)
            with pytest.raises(BackendError, match=r"dropped the connection.*nothing was stored"):
                await backend.upload_attachment("case", simulator.JOB_PRINTER, upload(b"data", "x.txt", "text/plain"))
            assert await listing(backend, simulator.JOB_PRINTER) == before
    (stored,) = [row for row in sim.files_of("jobs", simulator.JOB_PRINTER) if row["name"] == "x.txt"]
    assert stored["is_archived"] is True
    assert stored["id"] not in sim.contents


class _CountingTransport(httpx.AsyncBaseTransport):
    """A real socket transport that counts, per method, the answer bytes the client actually read."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.read: dict[str, int] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        inner, counts, method = response.stream, self.read, request.method

        class Counted(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                async for chunk in inner:  # type: ignore[union-attr]
                    counts[method] = counts.get(method, 0) + len(chunk)
                    yield chunk

            async def aclose(self) -> None:
                await inner.aclose()  # type: ignore[union-attr]

        return httpx.Response(
            response.status_code, headers=response.headers, stream=Counted(), extensions=response.extensions
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_an_echoed_upload_is_not_read_back(sim: WelloSimulator, tmp_path: Path) -> None:
    """A server that ignores `Prefer: return=minimal` echoes the record with its base64 content; the backend
    stops reading that answer early instead of holding the file a second time."""
    data = random.Random(8).randbytes(2_000_000)
    sim.faults.ignore_prefer = True
    transport = _CountingTransport()
    with serve(sim) as url:
        context = BackendContext(home=tmp_path, max_transfer_bytes=LIMIT, transport=transport)
        async with WelloBackend("wello", settings(url, sim), context) as backend:
            entry = await backend.upload_attachment("case", simulator.JOB_PRINTER, upload(data, "echo.bin"))
            assert await read(backend, entry.file_id) == data
    assert sim.contents[entry.file_id] == data
    assert transport.read["POST"] < 256 * 1024, transport.read  # of an answer of about 2.7 MB
    assert transport.read["GET"] > len(data)  # the counting itself works: the download was read whole


async def test_truncated_source_stores_nothing(crm: WelloBackend, sim: WelloSimulator) -> None:
    before = await listing(crm, simulator.JOB_PRINTER)
    with pytest.raises(BackendError, match="truncated"):
        await crm.upload_attachment("case", simulator.JOB_PRINTER, upload(b"abc", "x.bin", size=10))
    with pytest.raises(BackendError, match="more than"):
        await crm.upload_attachment("case", simulator.JOB_PRINTER, upload(b"abcdefgh", "x.bin", size=4))
    assert await listing(crm, simulator.JOB_PRINTER) == before
    assert len(sim.tables["DbFile"]) == len({*sim.tables["DbFile"]})


async def test_truncated_source_over_a_socket_stores_nothing(sim: WelloSimulator, tmp_path: Path) -> None:
    files_before = set(sim.tables["DbFile"])
    with serve(sim) as url:
        async with WelloBackend("wello", settings(url, sim), BackendContext(tmp_path, LIMIT)) as backend:
            with pytest.raises(BackendError, match="truncated"):
                await backend.upload_attachment(
                    "case", simulator.JOB_PRINTER, upload(os.urandom(300_000), "x.bin", size=400_000)
                )
    assert set(sim.tables["DbFile"]) == files_before


async def test_upload_over_the_limit_is_refused_before_sending(sim: WelloSimulator, tmp_path: Path) -> None:
    async with make(sim, tmp_path, limit=10) as backend:
        with pytest.raises(TooLargeError):
            await backend.upload_attachment("case", simulator.JOB_PRINTER, upload(b"x" * 11))
    assert sim.requests == []


async def test_upload_to_a_missing_job_is_not_found(crm: WelloBackend, sim: WelloSimulator) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        await crm.upload_attachment("case", MISSING, upload(b"x"))
    assert not any(r.method == "POST" for r in sim.requests)


# --------------------------------------------------------------------------------------- photos


async def test_photo_is_the_newest_image_of_the_contact(crm: WelloBackend, sim: WelloSimulator) -> None:
    photo = await crm.get_contact_photo(simulator.CONTACT_ALEXANDER)
    assert photo is not None
    assert photo.photo_id == simulator.FILE_ALEXANDER_PHOTO  # notes.txt is newer but not an image
    assert await crm.get_contact_photo(simulator.CONTACT_JOHN) is None
    with pytest.raises(NotFoundError, match="not found"):
        await crm.get_contact_photo(MISSING)
    with pytest.raises(NotFoundError, match="no photo"):
        async with crm.open_contact_photo(simulator.CONTACT_JOHN):
            pass


async def test_bind_photo_adds_a_new_image_and_keeps_the_old_one(crm: WelloBackend, sim: WelloSimulator) -> None:
    photo = await crm.bind_photo(simulator.CONTACT_ALEXANDER, upload(PNG, "face.png", "image/png"))
    assert (await crm.get_contact_photo(simulator.CONTACT_ALEXANDER)) == photo
    async with crm.open_contact_photo(simulator.CONTACT_ALEXANDER) as download:
        assert b"".join([c async for c in download.chunks]) == PNG
        assert download.mime_type == "image/png"
    old = sim.tables["DbFile"][simulator.FILE_ALEXANDER_PHOTO]
    assert old["is_archived"] is False  # not archived: archiving flushes the content
    assert sim.contents[simulator.FILE_ALEXANDER_PHOTO]  # the earlier photo keeps its bytes, as a contact file
    assert not any(r.method in ("PUT", "DELETE") for r in sim.requests)
    new = sim.tables["DbFile"][photo.photo_id]
    assert (new["db_table_name"], new["id_in_table"], new["mime_type"]) == (
        "contact",
        simulator.CONTACT_ALEXANDER,
        "image/png",
    )
    second = await crm.bind_photo(simulator.CONTACT_ALEXANDER, upload(PNG, "face.png", "image/png"))
    assert (await crm.get_contact_photo(simulator.CONTACT_ALEXANDER)) == second != photo


async def test_non_image_photo_is_refused_without_a_request(crm: WelloBackend, sim: WelloSimulator) -> None:
    with pytest.raises(InvalidInputError, match="image"):
        await crm.bind_photo(simulator.CONTACT_JOHN, upload(b"text", "x.txt", "text/plain"))
    assert sim.requests == []


# ----------------------------------------------------------------------------------------- find


async def test_find_records(crm: WelloBackend) -> None:
    contacts = await crm.find_records("contact", "wilson ALEXANDER", limit=5)
    assert [(r.id, r.title) for r in contacts] == [(simulator.CONTACT_ALEXANDER, "Alexander Wilson")]
    cases = await crm.find_records("case", "printer", limit=5)
    assert [(r.id, r.title) for r in cases] == [(simulator.JOB_PRINTER, "JOB-1001 · Printer on fire")]
    assert [r.id for r in await crm.find_records("case", "job-1002", limit=5)] == [simulator.JOB_INVOICE]
    assert len(await crm.find_records("case", "JOB", limit=1)) == 1


async def test_find_pages_past_twenty_and_puts_an_exact_reference_first(crm: WelloBackend, sim: WelloSimulator) -> None:
    for i in range(30):
        sim.add("Contact", first_name=f"Anna{i:02}", last_name="Smith", email=None, company_id=None)
        sim.add("Jobs", reference=f"A-{i:03}", subject="Boiler service after JOB-2")
    sim.add("Jobs", id=MISSING, reference="JOB-2", subject="Zeta")  # by reference it sorts after every A-xxx
    assert len(await crm.find_records("contact", "smith", limit=25)) == 25
    assert len(await crm.find_records("contact", "smith", limit=100)) == 30
    assert all(int(r.query["$top"]) <= 20 for r in sim.requests if r.path == "/api/Contact")
    boilers = await crm.find_records("case", "boiler", limit=100)
    assert len(boilers) == 30 and len({r.id for r in boilers}) == 30
    # 31 jobs contain "job-2" (30 in their subject); the one whose reference is exactly JOB-2 comes first, once.
    found = await crm.find_records("case", "JOB-2", limit=3)
    assert found[0].id == MISSING and len({r.id for r in found}) == 3
    many = await crm.find_records("case", "job-2", limit=100)
    assert many[0].id == MISSING and len(many) == 31 and len({r.id for r in many}) == 31


@pytest.mark.parametrize("query", ["O'Brien", "x') or true or contains(subject,'", "''", "a'b' and 'c"])
async def test_find_quotes_user_text(crm: WelloBackend, sim: WelloSimulator, query: str) -> None:
    assert await crm.find_records("case", query, limit=5) == []
    assert await crm.find_records("contact", query, limit=5) == []
    assert all(r.status == 200 for r in sim.requests)


async def test_find_a_contact_with_a_quote_in_the_name(crm: WelloBackend, sim: WelloSimulator) -> None:
    sim.add("Contact", id=MISSING, first_name="Siobhan", last_name="O'Brien", email=None, company_id=None)
    records = await crm.find_records("contact", "o'brien", limit=5)
    assert [(r.id, r.title) for r in records] == [(MISSING, "Siobhan O'Brien")]


# --------------------------------------------------------------------------------------- memory


@contextmanager
def _simulator_process() -> Iterator[tuple[str, str]]:
    """The simulator in its own process, so this process's memory is the backend's alone."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.simulators.wello"],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("http://"), line
        yield line, WelloSimulator().password
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.integration
async def test_a_50_mib_file_moves_with_little_memory(tmp_path: Path) -> None:
    size = 50 * 1024 * 1024
    block = random.Random(5).randbytes(1024 * 1024)

    async def source() -> AsyncIterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    expected = hashlib.sha256(block * (size // len(block))).hexdigest()
    with _simulator_process() as (url, password):
        sim = WelloSimulator()
        context = BackendContext(home=tmp_path, max_transfer_bytes=64 * 1024 * 1024)
        async with WelloBackend("wello", settings(url, sim, password=password), context) as backend:
            tracemalloc.start()
            try:
                entry = await backend.upload_attachment(
                    "case", simulator.JOB_PRINTER, Upload("big.bin", "application/octet-stream", size, source())
                )
                _, upload_peak = tracemalloc.get_traced_memory()
                tracemalloc.reset_peak()
                digest = hashlib.sha256()
                received = 0
                async with backend.open_file(entry.file_id) as download:
                    assert download.size == size
                    async for chunk in download.chunks:
                        digest.update(chunk)
                        received += len(chunk)
                _, download_peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert received == size
    assert digest.hexdigest() == expected
    # Well below the file's 50 MiB (and its 67 MiB of base64): a few chunks at a time.
    assert upload_peak < 8 * 1024 * 1024, upload_peak
    assert download_peak < 8 * 1024 * 1024, download_peak


@pytest.mark.anyio
async def test_a_shortened_name_is_said_in_the_tool_result(tmp_path: Path) -> None:
    from mcp import Client

    from crm_mcp.config import load_settings
    from crm_mcp.server import build_server
    from tests.contract.harnesses import HARNESSES  # imported through the registry (it loads harness_wello)

    async with HARNESSES["wello"].start(tmp_path) as started:
        config = tmp_path / "crm-mcp.toml"
        config.write_text(started.toml, encoding="utf-8")
        settings = load_settings(str(config), env={"CRM_MCP_HOME": str(tmp_path / "home")}, cwd=tmp_path)
        async with Client(build_server(settings)) as client:
            found = await client.call_tool("find_records", {"record_type": "case", "query": "Printer on fire"})
            case_id = found.structured_content["records"][0]["id"]
            long_name = "quarterly-report-" + "x" * 120 + ".pdf"
            result = await client.call_tool(
                "upload_attachment", {"record_id": case_id, "file_name": long_name, "content_text": "%PDF-1.4"}
            )
    stored = result.structured_content["name"]
    assert len(stored) <= 100
    assert stored.endswith(".pdf")
    assert f"the CRM stored the file as {stored!r}" in result.content[0].text


async def test_a_passing_503_is_retried(crm: WelloBackend, sim: WelloSimulator) -> None:
    sim.faults.fail_next_request = 503
    seen = len(sim.requests)
    assert await crm.find_records("case", "printer", limit=5)
    first, again = sim.requests[seen], sim.requests[seen + 1]
    assert (first.method, first.path) == (again.method, again.path)  # the same read, sent again
