"""The Creatio backend against the simulator: auth, session expiry, CSRF, filters, cleanup on failure,
OAuth renewal, validation before any request, and clear errors without secrets."""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client

from crm_mcp.backends import _demo, vendor_class
from crm_mcp.backends import creatio as creatio_module
from crm_mcp.backends.base import BackendContext, Upload
from crm_mcp.backends.creatio import FILE_TYPE_FILE, CreatioBackend, CreatioSettings
from crm_mcp.config import load_settings
from crm_mcp.errors import (
    AuthenticationError,
    BackendError,
    ConfigError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    TooLargeError,
)
from crm_mcp.server import build_server
from tests.helpers import PNG_1x1, find_one, ok, read_bytes, text_of
from tests.simulators.creatio import (
    ALEXANDER_WILSON,
    EMPTY,
    JOHN_BEST,
    OTHER_CASE,
    PRINTER_CASE,
    PRINTER_FILES,
    WILSON_PHOTO,
    CreatioSimulator,
    contract_simulator,
    serve,
)

pytestmark = pytest.mark.anyio

LIMIT = 5_000_000
MISSING = "6f1c2a4e-0000-4000-8000-000000000000"
ODATA = "/0/odata"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sim() -> CreatioSimulator:
    return contract_simulator()


def make(sim: CreatioSimulator, tmp_path: Path, *, limit: int = LIMIT, **values: Any) -> CreatioBackend:
    settings: dict[str, Any] = {"vendor": "creatio", "url": "https://creatio.test"}
    if values.get("auth") == "oauth":
        settings |= {
            "token_url": "https://creatio-is.test/connect/token",
            "client_id": sim.client_id,
            "client_secret": sim.client_secret,
        }
    else:
        settings |= {"username": sim.username, "password": sim.password}
    context = BackendContext(home=tmp_path, max_transfer_bytes=limit, transport=httpx.ASGITransport(app=sim))
    return CreatioBackend("crm", CreatioSettings.model_validate(settings | values), context)


@pytest.fixture
async def crm(sim: CreatioSimulator, tmp_path: Path) -> AsyncIterator[CreatioBackend]:
    async with make(sim, tmp_path) as backend:
        yield backend


async def _chunks(data: bytes, size: int = 65_536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def upload(data: bytes, name: str = "notes.txt", mime: str = "text/plain", size: int | None = None) -> Upload:
    return Upload(name=name, mime_type=mime, size=len(data) if size is None else size, chunks=_chunks(data))


async def read(crm: CreatioBackend, file_id: str) -> bytes:
    async with crm.open_file(file_id) as download:
        return b"".join([chunk async for chunk in download.chunks])


def case_files(sim: CreatioSimulator) -> set[str]:
    return {row["Id"] for row in sim.tables["CaseFile"].values() if row["CaseId"] == PRINTER_CASE}


def odata_requests(sim: CreatioSimulator) -> list[Any]:
    return [entry for entry in sim.requests if entry.path.startswith(ODATA)]


# -------------------------------------------------------------------------------------- settings


def test_registered_and_settings_validated() -> None:
    assert vendor_class("creatio") is CreatioBackend
    ok = CreatioSettings.model_validate(
        {"vendor": "creatio", "url": "https://x.creatio.com/", "username": "u", "password": "p", "odata_root": "odata"}
    )
    assert ok.url == "https://x.creatio.com"
    assert ok.odata_root == "/odata"
    assert "p" not in repr(ok.password)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('url = "https://x.test"\nusername = "u"', "password"),
        ('url = "https://x.test"\npassword = "p"', "username"),
        ('url = "https://x.test"\nauth = "oauth"\nclient_id = "c"\nclient_secret = "s"', "token_url"),
        (
            'url = "https://x.test"\nauth = "oauth"\ntoken_url = "https://i.test/connect/token"\nclient_id = "c"',
            "client_secret",
        ),
        ('url = "ftp://x.test"\nusername = "u"\npassword = "p"', "url"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, table: str, key: str) -> None:
    config = tmp_path / "crm-mcp.toml"
    config.write_text(f'[backends.crm]\nvendor = "creatio"\n{table}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=key):
        load_settings(str(config), env={"CRM_MCP_HOME": str(tmp_path)}, cwd=tmp_path)


# ------------------------------------------------------------------------------------------ auth


async def test_opening_sends_nothing_and_check_logs_in(sim: CreatioSimulator, tmp_path: Path) -> None:
    async with make(sim, tmp_path) as crm:
        assert sim.requests == []
        line = await crm.check()
    assert "Creatio" in line
    assert "\n" not in line
    assert sim.logins == 1


async def test_bad_credentials_are_a_clear_login_failure(sim: CreatioSimulator, tmp_path: Path) -> None:
    async with make(sim, tmp_path, password="wrong-password-value") as crm:
        with pytest.raises(AuthenticationError, match="login failed") as caught:
            await crm.list_case_files(PRINTER_CASE, limit=10, cursor=None)
    assert "wrong-password-value" not in str(caught.value)
    assert odata_requests(sim) == []


async def test_every_request_has_force_use_session_and_every_write_the_csrf_header(
    sim: CreatioSimulator, crm: CreatioBackend
) -> None:
    entry = await crm.upload_attachment("case", PRINTER_CASE, upload(b"hello"))
    await crm.bind_photo(JOHN_BEST, upload(PNG_1x1, "face.png", "image/png"))
    await read(crm, entry.file_id)
    session_csrf = next(iter(sim.sessions.values()))
    requests = odata_requests(sim)
    assert all(r.headers.get("forceusesession") == "true" for r in requests)
    writes = [r for r in requests if r.method != "GET"]
    assert {r.method for r in writes} >= {"POST", "PUT", "PATCH"}
    assert all(r.headers.get("bpmcsrf") == session_csrf for r in writes)
    assert all(r.status < 400 for r in writes)


async def test_a_wrong_csrf_header_is_a_clear_403_without_secrets(
    sim: CreatioSimulator, crm: CreatioBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await crm.check()
    crm._session.csrf = "forged-csrf-value"
    before = case_files(sim)
    with pytest.raises(PermissionDeniedError, match="BPMCSRF") as caught:
        await crm.upload_attachment("case", PRINTER_CASE, upload(b"x"))
    assert case_files(sim) == before
    secrets = ["forged-csrf-value", sim.password, *sim.sessions, *sim.sessions.values()]
    for secret in secrets:
        assert secret not in str(caught.value)
        assert secret not in caplog.text


@pytest.mark.parametrize("style", ["html", "redirect", "401"])
async def test_reads_recover_from_an_expired_session(sim: CreatioSimulator, crm: CreatioBackend, style: str) -> None:
    sim.expiry_style = style  # type: ignore[assignment]
    first = await crm.list_case_files(PRINTER_CASE, limit=10, cursor=None)
    sim.expire_sessions()
    again = await crm.list_case_files(PRINTER_CASE, limit=10, cursor=None)
    assert again == first
    assert sim.logins == 2
    sim.expire_sessions()
    assert await read(crm, first.files[0].file_id)
    assert sim.logins == 3


async def test_concurrent_calls_log_in_again_only_once(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    await crm.check()
    sim.expire_sessions()
    results: list[Any] = []

    async def one() -> None:
        results.append(await crm.get_contact_photo(ALEXANDER_WILSON))

    async with anyio.create_task_group() as group:
        for _ in range(6):
            group.start_soon(one)
    assert len(results) == 6
    assert sim.logins == 2


@pytest.mark.parametrize("style", ["html", "redirect", "401"])
async def test_a_write_refused_as_expired_is_sent_once_more_and_not_duplicated(
    sim: CreatioSimulator, crm: CreatioBackend, style: str
) -> None:
    sim.expiry_style = style  # type: ignore[assignment]
    await crm.check()
    sim.fail("POST", "/CaseFile", "expire")
    before = case_files(sim)
    entry = await crm.upload_attachment("case", PRINTER_CASE, upload(b"once"))
    assert len(case_files(sim)) == len(before) + 1
    posts = sim.writes("POST", "/CaseFile")
    assert [p.processed for p in posts] == [False, True]
    assert await read(crm, entry.file_id) == b"once"


@pytest.mark.parametrize("style", ["html", "redirect", "401"])
async def test_expiry_before_the_bytes_removes_the_record(
    sim: CreatioSimulator, crm: CreatioBackend, style: str
) -> None:
    """A streamed body cannot be sent twice: the record is removed and the error says so."""
    sim.expiry_style = style  # type: ignore[assignment]
    sim.fail("PUT", "/Data", "expire")
    before = case_files(sim)
    with pytest.raises(BackendError, match="removed"):
        await crm.upload_attachment("case", PRINTER_CASE, upload(b"x" * 1000))
    assert case_files(sim) == before
    assert len(sim.writes("POST", "/CaseFile")) == 1
    assert [put.processed for put in sim.writes("PUT")] == [False]
    assert sim.logins == 2


@pytest.mark.parametrize("style", ["html", "redirect", "401"])
async def test_photo_bind_survives_expiry_midway(sim: CreatioSimulator, crm: CreatioBackend, style: str) -> None:
    sim.expiry_style = style  # type: ignore[assignment]
    sim.fail("PATCH", "/Contact(", "expire")
    photo = await crm.bind_photo(JOHN_BEST, upload(PNG_1x1, "face.png", "image/png"))
    assert sim.row("Contact", JOHN_BEST)["PhotoId"] == photo.photo_id  # type: ignore[index]
    assert len(sim.writes("POST", "/SysImage")) == 1
    assert [p.processed for p in sim.writes("PATCH")] == [False, True]


# --------------------------------------------------------------------------------------- filters


async def test_case_files_are_filtered_by_the_lookup_path(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    first = await crm.list_case_files(PRINTER_CASE, limit=2, cursor=None)
    assert first.next_cursor is not None
    await crm.list_case_files(PRINTER_CASE, limit=2, cursor=first.next_cursor)
    listings = [r for r in sim.requests if r.path == f"{ODATA}/CaseFile"]
    assert [r.query for r in listings] == [
        {
            "$filter": f"Case/Id eq {PRINTER_CASE}",
            "$select": "Id,Name,Size,CreatedOn,TypeId",  # metadata only, never the Data stream
            "$orderby": "CreatedOn,Id",
            "$top": "3",
            "$skip": str(skip),
        }
        for skip in (0, 2)
    ]


@pytest.mark.parametrize(
    "expression",
    [f"CaseId eq '{PRINTER_CASE}'", f"CaseId eq guid'{PRINTER_CASE}'", f"CaseId eq {PRINTER_CASE}"],
)
async def test_the_simulator_refuses_the_filters_creatio_refuses(sim: CreatioSimulator, expression: str) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="https://creatio.test") as client:
        login = await client.post(
            "/ServiceModel/AuthService.svc/Login", json={"UserName": sim.username, "UserPassword": sim.password}
        )
        assert login.json()["Code"] == 0
        assert {".ASPXAUTH", "BPMCSRF", "BPMLOADER", "UserName"} <= set(login.cookies)
        refused = await client.get(f"{ODATA}/CaseFile", params={"$filter": expression})
        accepted = await client.get(f"{ODATA}/CaseFile", params={"$filter": f"Case/Id eq {PRINTER_CASE}"})
        unknown = await client.get(f"{ODATA}/NoSuchThing")
        no_csrf = await client.post(f"{ODATA}/Contact", json={"Name": "X"})
        batch = await client.post(f"{ODATA}/$batch", json={"requests": []})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert "incompatible types" in error["innererror"]["message"]
    assert accepted.status_code == 200
    assert len(accepted.json()["value"]) == 4
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("text/html")
    assert no_csrf.status_code == 403
    assert batch.status_code == 403


async def test_the_simulator_caps_rows(sim: CreatioSimulator) -> None:
    sim.max_rows = 3
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="https://creatio.test") as client:
        await client.post(
            "/ServiceModel/AuthService.svc/Login", json={"UserName": sim.username, "UserPassword": sim.password}
        )
        answer = await client.get(f"{ODATA}/CaseFile", params={"$top": "100"})
    assert len(answer.json()["value"]) == 3


async def test_find_escapes_quotes(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    found = await crm.find_records("contact", "o'brien", limit=5)
    assert [record.title for record in found] == ["Pat O'Brien"]
    assert await crm.find_records("contact", "x') or contains(Name,'", limit=5) == []
    sent = [r.query["$filter"] for r in sim.requests if r.path == f"{ODATA}/Contact"]
    assert sent[-1] == "contains(Name,'x'') or contains(Name,''')"
    assert await crm.find_records("case", "zz') or contains(Subject,'", limit=5) == []
    assert await crm.find_records("case", "' or Id ne null or '", limit=5) == []
    cases = await crm.find_records("case", "SR00001001", limit=5)
    assert [record.id for record in cases] == [PRINTER_CASE]


# ---------------------------------------------------------------------------------- files, links


async def test_links_are_listed_as_links_and_have_no_bytes(crm: CreatioBackend) -> None:
    page = await crm.list_case_files(PRINTER_CASE, limit=50, cursor=None)
    links = [entry for entry in page.files if entry.kind == "link"]
    assert [link.url for link in links] == ["https://support.example.com/kb/printer-fire"]
    assert {entry.file_id for entry in page.files if entry.kind == "file"} == set(PRINTER_FILES)
    with pytest.raises(InvalidInputError, match="link"):
        await read(crm, links[0].file_id)


async def test_listing_checks_the_case_only_when_no_row_came_back(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    """A file row names its case, so a listing with rows needs no second request in sequence; an empty one
    still tells an existing case without files from a missing case."""
    page = await crm.list_case_files(PRINTER_CASE, limit=50, cursor=None)
    assert page.files
    assert [r.path for r in odata_requests(sim)] == [f"{ODATA}/CaseFile"]
    sim.requests.clear()
    empty = await crm.list_case_files(OTHER_CASE, limit=50, cursor=None)
    assert (empty.files, empty.next_cursor) == ([], None)
    assert [r.path for r in odata_requests(sim)] == [f"{ODATA}/CaseFile", f"{ODATA}/Case"]
    with pytest.raises(NotFoundError, match=f"case {MISSING} was not found"):
        await crm.list_case_files(MISSING, limit=5, cursor=None)


async def test_missing_case_and_file_are_not_found(crm: CreatioBackend) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        await crm.list_case_files(MISSING, limit=5, cursor=None)
    with pytest.raises(NotFoundError, match="not found"):
        await read(crm, f"CaseFile.{MISSING}")
    with pytest.raises(NotFoundError, match="not found"):
        await crm.upload_attachment("account", MISSING, upload(b"x"))


async def test_malformed_ids_send_no_request(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    bad = "CS-1001"
    with pytest.raises(InvalidInputError, match="not a valid id"):
        await crm.list_case_files(bad, limit=5, cursor=None)
    with pytest.raises(InvalidInputError, match="not a valid id"):
        await crm.get_contact_photo(bad)
    with pytest.raises(InvalidInputError, match="not a valid id"):
        await crm.upload_attachment("contact", bad, upload(b"x"))
    with pytest.raises(InvalidInputError, match="not a valid id"):
        await crm.bind_photo(bad, upload(PNG_1x1, "f.png", "image/png"))
    for file_id in (bad, MISSING, f"CaseFile.{bad}", f"Contact.{MISSING}", "CaseFile.1) or (1"):
        with pytest.raises(InvalidInputError, match="not a valid id"):
            await read(crm, file_id)
    with pytest.raises(InvalidInputError, match="not a valid id"):
        async with crm.open_contact_photo(bad):
            pass
    with pytest.raises(InvalidInputError, match="cursor"):
        await crm.list_case_files(PRINTER_CASE, limit=5, cursor="bogus")
    assert sim.requests == []


# ------------------------------------------------------------------------------ failed uploads


@pytest.mark.parametrize("kind", ["500", "500-after", "drop", "503"])
async def test_failed_bytes_leave_no_file_record(sim: CreatioSimulator, crm: CreatioBackend, kind: str) -> None:
    sim.fail("PUT", "/CaseFile(", kind)
    before = case_files(sim)
    with pytest.raises(BackendError, match="removed again") as caught:
        await crm.upload_attachment("case", PRINTER_CASE, upload(b"y" * 200_000, "big.bin", OCTET))
    assert case_files(sim) == before
    assert len(sim.writes("PUT")) == 1  # never resent
    (delete,) = sim.writes("DELETE")
    assert delete.processed
    assert delete.headers["bpmcsrf"] in sim.sessions.values()
    assert sim.password not in str(caught.value)


OCTET = "application/octet-stream"


async def test_truncated_source_leaves_no_file_record(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    before = case_files(sim)
    with pytest.raises(BackendError, match="truncated"):
        await crm.upload_attachment("case", PRINTER_CASE, upload(b"z" * 1000, "cut.bin", OCTET, size=5000))
    assert case_files(sim) == before


async def test_record_creation_that_failed_is_checked_not_repeated(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    sim.fail("POST", "/CaseFile", "500")
    before = case_files(sim)
    with pytest.raises(BackendError, match="no record was created"):
        await crm.upload_attachment("case", PRINTER_CASE, upload(b"a"))
    sim.fail("POST", "/CaseFile", "500-after")
    with pytest.raises(BackendError, match="created and was removed again"):
        await crm.upload_attachment("case", PRINTER_CASE, upload(b"a"))
    assert case_files(sim) == before
    assert len(sim.writes("POST", "/CaseFile")) == 2
    assert sim.writes("PUT") == []


async def test_odata_errors_show_the_inner_cause(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    sim.max_file_size = 10
    before = case_files(sim)
    with pytest.raises(BackendError, match="MaxFileSize") as caught:
        await crm.upload_attachment("case", PRINTER_CASE, upload(b"q" * 100))
    assert "An error has occurred" not in str(caught.value)
    assert case_files(sim) == before


async def test_uploads_to_contacts_and_accounts_use_their_tables(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    contact = await crm.upload_attachment("contact", JOHN_BEST, upload(b"c", "c.txt"))
    account_id = next(iter(sim.tables["Account"]))
    account = await crm.upload_attachment("account", account_id, upload(b"a", "a.txt"))
    assert contact.file_id.startswith("ContactFile.")
    assert account.file_id.startswith("AccountFile.")
    row = sim.row("ContactFile", contact.file_id.partition(".")[2])
    assert row is not None
    assert (row["ContactId"], row["TypeId"], row["Size"], row["Name"]) == (JOHN_BEST, FILE_TYPE_FILE, 1, "c.txt")
    assert await read(crm, account.file_id) == b"a"


# ------------------------------------------------------------------------------------ photos


async def test_photo_is_read_through_photo_id(crm: CreatioBackend) -> None:
    photo = await crm.get_contact_photo(ALEXANDER_WILSON)
    assert photo is not None
    assert (photo.photo_id, photo.mime_type) == (WILSON_PHOTO, "image/png")
    assert await crm.get_contact_photo(JOHN_BEST) is None
    async with crm.open_contact_photo(ALEXANDER_WILSON) as download:
        data = b"".join([chunk async for chunk in download.chunks])
    assert data.startswith(b"\x89PNG")
    assert download.size == len(data)


@pytest.mark.parametrize(("method", "path", "kind"), [("PUT", "/SysImage(", "500"), ("PATCH", "/Contact(", "500")])
async def test_failed_bind_leaves_no_sysimage(
    sim: CreatioSimulator, crm: CreatioBackend, method: str, path: str, kind: str
) -> None:
    images = set(sim.tables["SysImage"])
    sim.fail(method, path, kind)
    with pytest.raises(BackendError, match="photo is unchanged"):
        await crm.bind_photo(ALEXANDER_WILSON, upload(PNG_1x1, "face.png", "image/png"))
    assert set(sim.tables["SysImage"]) == images
    assert sim.row("Contact", ALEXANDER_WILSON)["PhotoId"] == WILSON_PHOTO  # type: ignore[index]


async def test_a_patch_that_failed_after_it_was_applied_counts(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    sim.fail("PATCH", "/Contact(", "500-after")
    photo = await crm.bind_photo(JOHN_BEST, upload(PNG_1x1, "face.png", "image/png"))
    assert sim.row("Contact", JOHN_BEST)["PhotoId"] == photo.photo_id  # type: ignore[index]
    assert len(sim.writes("PATCH")) == 1
    assert sim.row("SysImage", photo.photo_id) is not None


async def test_bind_follows_the_documented_steps(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    assert sim.row("Contact", JOHN_BEST)["PhotoId"] == EMPTY  # type: ignore[index]
    photo = await crm.bind_photo(JOHN_BEST, upload(PNG_1x1, "face.png", "image/png"))
    steps = [(w.method, w.path.removeprefix(ODATA)) for w in sim.writes() if w.path.startswith(ODATA)]
    assert steps == [
        ("POST", "/SysImage"),
        ("PUT", f"/SysImage({photo.photo_id})/Data"),
        ("PATCH", f"/Contact({JOHN_BEST})"),
    ]
    assert sim.blobs[("SysImage", photo.photo_id)] == PNG_1x1
    put = sim.writes("PUT")[0]
    assert put.headers["content-type"] == "application/octet-stream"


# ---------------------------------------------------------------------------- reads under faults


async def test_reads_retry_after_503_and_a_lost_connection(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    sim.fail("GET", "/CaseFile", "503", retry_after=0)
    page = await crm.list_case_files(PRINTER_CASE, limit=10, cursor=None)
    file_id = next(iter(PRINTER_FILES))
    assert file_id in {entry.file_id for entry in page.files}
    sim.fail("GET", "/Data", "drop")
    assert await read(crm, file_id) == sim.blobs[("CaseFile", file_id.partition(".")[2])]
    sim.fail("GET", "/Data", "drop", times=3)  # as often as the backend tries (retries.attempts)
    with pytest.raises(BackendError, match="connection"):
        await read(crm, file_id)


async def test_a_wrong_odata_root_is_explained(sim: CreatioSimulator, tmp_path: Path) -> None:
    async with make(sim, tmp_path, odata_root="/odata") as crm:
        with pytest.raises(BackendError, match="odata_root"):
            await crm.check()


async def test_net_core_root(tmp_path: Path) -> None:
    sim = contract_simulator(odata_root="/odata")
    async with make(sim, tmp_path, odata_root="/odata") as crm:
        assert (await crm.list_case_files(PRINTER_CASE, limit=50, cursor=None)).files


# ----------------------------------------------------------------------------------------- OAuth


@pytest.mark.parametrize("announced", [True, False])
async def test_oauth_token_is_reused_renewed_before_expiry_and_after_401(
    sim: CreatioSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, announced: bool
) -> None:
    """The simulator's tokens really stop working after `expires_in` (3600 s when the answer leaves it
    out, as the notes say to assume); backend and simulator share one clock."""
    now = [1000.0]
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    monkeypatch.setattr(creatio_module, "_clock", lambda: now[0])
    sim.clock = lambda: start + timedelta(seconds=now[0])
    sim.token_expires_in = announced

    def refused() -> list[Any]:
        return [r for r in odata_requests(sim) if r.status == 401]

    async with make(sim, tmp_path, auth="oauth") as crm:
        await crm.check()
        await crm.find_records("contact", "Wilson", limit=5)
        assert sim.token_requests == 1
        assert sim.logins == 0
        assert all("cookie" not in r.headers and "bpmcsrf" not in r.headers for r in odata_requests(sim))
        assert all(r.headers["authorization"].startswith("Bearer ") for r in odata_requests(sim))
        now[0] += 3600 - 30  # still valid at the simulator, but inside the renewal margin
        await crm.find_records("contact", "Wilson", limit=5)
        assert sim.token_requests == 2
        now[0] += 3600 + 5  # the second token has expired at the simulator too: renewed before use
        await crm.upload_attachment("case", PRINTER_CASE, upload(b"renewed"))
        assert sim.token_requests == 3
        assert refused() == []  # an expired token was never sent
        sim.expire_sessions()  # the server forgets the token early: one 401, one new token, retried
        assert await crm.get_contact_photo(ALEXANDER_WILSON) is not None
        assert sim.token_requests == 4
        assert len(refused()) == 1


async def test_oauth_bad_secret_is_clear_and_secret_free(sim: CreatioSimulator, tmp_path: Path) -> None:
    async with make(sim, tmp_path, auth="oauth", client_secret="not-the-secret") as crm:
        with pytest.raises(AuthenticationError, match="client_secret") as caught:
            await crm.check()
    assert "not-the-secret" not in str(caught.value)


# ------------------------------------------------------------------------------- over a real socket


async def test_over_a_socket_expiry_redirects_and_dropped_bodies(tmp_path: Path) -> None:
    sim = contract_simulator(expiry_style="redirect")
    with serve(sim) as url:
        context = BackendContext(home=tmp_path, max_transfer_bytes=LIMIT)
        settings = CreatioSettings.model_validate(
            {"vendor": "creatio", "url": url, "username": sim.username, "password": sim.password}
        )
        async with CreatioBackend("crm", settings, context) as crm:
            entry = await crm.upload_attachment("case", PRINTER_CASE, upload(b"s" * 300_000, "s.bin", OCTET))
            sim.expire_sessions()
            assert await read(crm, entry.file_id) == b"s" * 300_000
            assert sim.logins == 2
            sim.fail("GET", "/Data", "drop", times=2)
            with pytest.raises(BackendError, match="connection"):
                await read(crm, entry.file_id)
            before = case_files(sim)
            sim.fail("PUT", "/Data", "drop")
            with pytest.raises(BackendError, match="removed again"):
                await crm.upload_attachment("case", PRINTER_CASE, upload(b"t" * 1000, "t.bin", OCTET))
            assert case_files(sim) == before


# ------------------------------------------------------------------- writes with unknown outcomes


async def test_failed_bytes_and_failed_cleanup_name_the_leftover_record(
    sim: CreatioSimulator, crm: CreatioBackend
) -> None:
    sim.fail("PUT", "/CaseFile(", "500")
    sim.fail("DELETE", "/CaseFile(", "500")
    before = case_files(sim)
    with pytest.raises(BackendError, match="could not be removed; delete it in Creatio") as caught:
        await crm.upload_attachment("case", PRINTER_CASE, upload(b"left"))
    (leftover,) = case_files(sim) - before
    assert leftover in str(caught.value)
    assert len(sim.writes("PUT")) == 1
    assert len(sim.writes("DELETE")) == 1  # a failed cleanup is reported, not hammered


async def test_a_record_creation_cut_off_is_looked_up_and_removed(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    sim.fail("POST", "/CaseFile", "drop")
    before = case_files(sim)
    with pytest.raises(BackendError, match="created and was removed again"):
        await crm.upload_attachment("case", PRINTER_CASE, upload(b"a"))
    assert case_files(sim) == before
    (post,) = sim.writes("POST", "/CaseFile")
    assert post.processed  # Creatio did create it: the POST was not sent again, the record was removed
    assert sim.writes("PUT") == []


async def test_a_creation_whose_outcome_cannot_be_checked_is_still_cleaned_up(
    sim: CreatioSimulator, crm: CreatioBackend
) -> None:
    sim.fail("POST", "/CaseFile", "500-after")
    sim.fail("GET", "/CaseFile", "500")  # the look-up that would tell fails too
    before = case_files(sim)
    with pytest.raises(BackendError, match="removed in case it had been created"):
        await crm.upload_attachment("case", PRINTER_CASE, upload(b"a"))
    assert case_files(sim) == before
    assert len(sim.writes("POST", "/CaseFile")) == 1


async def test_a_photo_patch_with_unknown_outcome_keeps_the_image(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    """Removing the SysImage could leave the contact pointing at nothing: keep it and say so."""
    sim.fail("PATCH", "/Contact(", "500-after")
    sim.fail("GET", "/Contact", "500", after=1)  # the contact check before the bind passes, the one after fails
    images = set(sim.tables["SysImage"])
    with pytest.raises(BackendError, match="unknown") as caught:
        await crm.bind_photo(JOHN_BEST, upload(PNG_1x1, "face.png", "image/png"))
    (new_image,) = set(sim.tables["SysImage"]) - images
    assert f"SysImage {new_image} was kept" in str(caught.value)
    assert sim.row("Contact", JOHN_BEST)["PhotoId"] == new_image  # type: ignore[index]
    assert sim.writes("DELETE") == []
    assert len(sim.writes("PATCH")) == 1


async def test_a_failed_image_creation_is_not_repeated_and_leaves_nothing(
    sim: CreatioSimulator, crm: CreatioBackend
) -> None:
    sim.fail("POST", "/SysImage", "500-after")
    images = set(sim.tables["SysImage"])
    with pytest.raises(BackendError, match="removed again"):
        await crm.bind_photo(JOHN_BEST, upload(PNG_1x1, "face.png", "image/png"))
    assert set(sim.tables["SysImage"]) == images
    assert len(sim.writes("POST", "/SysImage")) == 1
    assert sim.row("Contact", JOHN_BEST)["PhotoId"] == EMPTY  # type: ignore[index]


# -------------------------------------------------------------------------------------- streaming


async def _waiting_source(sim: CreatioSimulator, pieces: int, size: int) -> AsyncIterator[bytes]:
    """Yields `pieces` chunks, but the last only once Creatio has received bytes of this PUT: a
    backend that reads the whole upload before sending never gets there."""
    for index in range(pieces):
        if index == pieces - 1:
            for _ in range(1000):  # polled: over a socket the simulator runs in another thread
                if any(sim.received.values()):
                    break
                await anyio.sleep(0.005)
            else:
                raise AssertionError("Creatio received none of the upload before its last chunk was asked for")
        yield bytes([65 + index]) * size


@pytest.mark.parametrize("where", ["inprocess", "socket"])
async def test_uploads_are_streamed_not_read_whole_first(tmp_path: Path, where: str) -> None:
    sim = contract_simulator()
    pieces, size = 4, 65_536
    expected = b"".join(bytes([65 + index]) * size for index in range(pieces))

    async def run(crm: CreatioBackend) -> None:
        for kind in ("file", "photo"):
            sim.received.clear()
            source = Upload(
                name="s.png" if kind == "photo" else "s.bin",
                mime_type="image/png" if kind == "photo" else OCTET,
                size=pieces * size,
                chunks=_waiting_source(sim, pieces, size),
            )
            if kind == "file":
                entry = await crm.upload_attachment("case", PRINTER_CASE, source)
                assert sim.blobs[("CaseFile", entry.file_id.partition(".")[2])] == expected
            else:
                photo = await crm.bind_photo(JOHN_BEST, source)
                assert sim.blobs[("SysImage", photo.photo_id)] == expected

    if where == "inprocess":
        async with make(sim, tmp_path) as crm:
            await run(crm)
        return
    with serve(sim) as url:
        settings = CreatioSettings.model_validate(
            {"vendor": "creatio", "url": url, "username": sim.username, "password": sim.password}
        )
        async with CreatioBackend("crm", settings, BackendContext(home=tmp_path, max_transfer_bytes=LIMIT)) as crm:
            await run(crm)


async def test_downloads_are_streamed_not_read_whole_first(tmp_path: Path) -> None:
    """The simulator holds every download after its first chunk until the test has that chunk in
    hand (and cuts the connection after 5 s): only a streaming backend gets the first chunk early."""
    sim = contract_simulator(chunk_size=65_536)
    data = bytes(range(256)) * 4096  # 1 MiB
    file_id = sim.add("CaseFile", Name="big.bin", CaseId=PRINTER_CASE, TypeId=FILE_TYPE_FILE, Size=len(data))
    sim.blobs[("CaseFile", file_id)] = data
    with serve(sim) as url:
        settings = CreatioSettings.model_validate(
            {"vendor": "creatio", "url": url, "username": sim.username, "password": sim.password}
        )
        async with CreatioBackend("crm", settings, BackendContext(home=tmp_path, max_transfer_bytes=LIMIT)) as crm:
            sim.hold = threading.Event()
            async with crm.open_file(f"CaseFile.{file_id}") as download:
                first = await anext(download.chunks)
                assert 0 < len(first) < len(data)
                sim.hold.set()
                rest = b"".join([chunk async for chunk in download.chunks])
            assert (download.size, first + rest) == (len(data), data)
            sim.hold = threading.Event()
            async with crm.open_contact_photo(ALEXANDER_WILSON) as download:
                first = await anext(download.chunks)
                sim.hold.set()
                rest = b"".join([chunk async for chunk in download.chunks])
            assert first + rest == sim.blobs[("SysImage", WILSON_PHOTO)]


async def test_the_size_column_is_not_trusted_for_a_chunked_download(sim: CreatioSimulator, tmp_path: Path) -> None:
    """Clients write `Size` themselves; without Content-Length the bytes decide, and the limit holds."""
    sim.announce_length = False
    data = b"0123456789" * 10_000
    file_id = sim.add("CaseFile", Name="wrong-size.txt", CaseId=PRINTER_CASE, TypeId=FILE_TYPE_FILE, Size=7)
    sim.blobs[("CaseFile", file_id)] = data
    async with make(sim, tmp_path) as crm, crm.open_file(f"CaseFile.{file_id}") as download:
        assert download.size is None  # unknown, not the wrong 7
        assert b"".join([chunk async for chunk in download.chunks]) == data
    async with make(sim, tmp_path, limit=50_000) as small:
        with pytest.raises(TooLargeError, match="transfer limit"):
            await read(small, f"CaseFile.{file_id}")


# ------------------------------------------------------------------------------ sessions, quirks


async def test_each_backend_keeps_its_own_session(sim: CreatioSimulator, tmp_path: Path) -> None:
    async with make(sim, tmp_path) as one, make(sim, tmp_path) as two:
        await one.upload_attachment("case", PRINTER_CASE, upload(b"1"))
        await two.upload_attachment("case", PRINTER_CASE, upload(b"2"))
    assert sim.logins == 2
    sessions = {r.headers["cookie"].split(".ASPXAUTH=")[1].split(";")[0] for r in odata_requests(sim)}
    assert sessions == set(sim.sessions)
    assert len(sessions) == 2
    for r in odata_requests(sim):
        auth = r.headers["cookie"].split(".ASPXAUTH=")[1].split(";")[0]
        if r.method != "GET":
            assert r.headers["bpmcsrf"] == sim.sessions[auth]  # each sends the CSRF token of its own session


async def test_entity_links_are_links_too(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    link_id = sim.add(
        "CaseFile", Name="Account: Our Company", CaseId=PRINTER_CASE, TypeId="549bc2f8-0ee0-df11-971b-001d60e938c6"
    )
    page = await crm.list_case_files(PRINTER_CASE, limit=50, cursor=None)
    entry = next(entry for entry in page.files if entry.file_id == f"CaseFile.{link_id}")
    assert (entry.kind, entry.url, entry.size) == ("link", None, None)
    before = len(sim.requests)
    with pytest.raises(InvalidInputError, match="no bytes"):
        await read(crm, entry.file_id)
    assert not any(r.path.endswith("/Data") for r in sim.requests[before:])  # no stream was asked for


async def test_the_simulator_keeps_creatio_s_other_rules(sim: CreatioSimulator) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="https://creatio.test") as client:
        form_login = await client.post(
            "/ServiceModel/AuthService.svc/Login", data={"UserName": sim.username, "UserPassword": sim.password}
        )
        assert form_login.status_code == 415
        login = await client.post(
            "/ServiceModel/AuthService.svc/Login", json={"UserName": sim.username, "UserPassword": sim.password}
        )
        csrf = {"BPMCSRF": login.cookies["BPMCSRF"]}
        bad_type = await client.post(
            f"{ODATA}/CaseFile",
            json={"Name": "x", "CaseId": PRINTER_CASE, "TypeId": "11111111-2222-4333-8444-555555555555"},
            headers=csrf,
        )
        counted = await client.get(f"{ODATA}/CaseFile", params={"$count": "true", "$top": "1"})
        expanded = await client.get(f"{ODATA}/Case", params={"$expand": "Contact"})
        quoted_key = await client.get(f"{ODATA}/Contact('{JOHN_BEST}')")
        wrong_put = await client.put(
            f"{ODATA}/SysImage({WILSON_PHOTO})/Data", content=b"x", headers={**csrf, "Content-Type": "image/png"}
        )
    assert bad_type.status_code == 500
    assert "FOREIGN KEY" in bad_type.json()["error"]["innererror"]["message"]
    assert counted.json()["@odata.count"] == 4
    assert len(counted.json()["value"]) == 1
    assert expanded.status_code == 501
    assert quoted_key.status_code == 400
    assert wrong_put.status_code == 415
    assert sim.blobs[("SysImage", WILSON_PHOTO)].startswith(b"\x89PNG")


# -------------------------------------------------------------- the seed scenarios, through MCP


async def test_the_four_documented_scenarios_work_through_the_mcp_tools(tmp_path: Path) -> None:
    """Creatio's stream examples (read, add and change a contact photo) and the community thread's
    "files of a case", each through the tools, with the requests the documentation shows."""
    sim = contract_simulator()
    config = tmp_path / "crm-mcp.toml"
    config.write_text(
        f'[backends.creatio]\nvendor = "creatio"\nurl = "https://creatio.test"\n'
        f'username = "{sim.username}"\npassword = "{sim.password}"\n',
        encoding="utf-8",
    )
    settings = load_settings(str(config), env={"CRM_MCP_HOME": str(tmp_path / "home")}, cwd=tmp_path)
    new_face = _demo.avatar_png()
    assert new_face != PNG_1x1
    async with Client(build_server(settings, transport=httpx.ASGITransport(app=sim))) as client:
        # 1. Read a contact photo: Contact.PhotoId, then GET SysImage(<PhotoId>)/Data.
        wilson = await find_one(client, "contact", "Alexander Wilson")
        photo = (await ok(client, "get_contact_photo", contact_id=wilson))["photo"]
        assert photo["photo_id"] == WILSON_PHOTO
        assert await read_bytes(client, photo["resource_uri"]) == (sim.blobs[("SysImage", WILSON_PHOTO)], "image/png")
        assert any(r.method == "GET" and r.path == f"{ODATA}/SysImage({WILSON_PHOTO})/Data" for r in sim.requests)

        # 2. Add a contact photo: POST SysImage, PUT SysImage(id)/Data, PATCH Contact(id) {PhotoId}.
        john = await find_one(client, "contact", "John Best")
        sim.requests.clear()
        added = (await ok(client, "bind_photo", contact_id=john, content_base64=base64.b64encode(PNG_1x1).decode()))[
            "photo"
        ]
        image = added["photo_id"]
        steps = [(w.method, w.path.removeprefix(ODATA)) for w in sim.writes()]
        assert steps == [("POST", "/SysImage"), ("PUT", f"/SysImage({image})/Data"), ("PATCH", f"/Contact({john})")]
        assert all(w.headers["bpmcsrf"] == next(iter(sim.sessions.values())) for w in sim.writes())
        assert sim.row("SysImage", image)["MimeType"] == "image/png"  # type: ignore[index]
        assert sim.row("Contact", john)["PhotoId"] == image  # type: ignore[index]
        assert await read_bytes(client, added["resource_uri"]) == (PNG_1x1, "image/png")

        # 3. Change it: the contact shows the new bytes; the old image is left as it was.
        changed = (await ok(client, "bind_photo", contact_id=john, content_base64=base64.b64encode(new_face).decode()))[
            "photo"
        ]
        assert changed["photo_id"] != image
        assert (await ok(client, "get_contact_photo", contact_id=john))["photo"]["photo_id"] == changed["photo_id"]
        assert (await read_bytes(client, changed["resource_uri"]))[0] == new_face
        assert sim.blobs[("SysImage", image)] == PNG_1x1

        # 4. List a case's files: CaseFile?$filter=Case/Id eq <guid>; the link is shown as a link.
        case = await find_one(client, "case", "Printer on fire")
        result = await client.call_tool("list_case_files", {"case_id": case})
        assert not result.is_error
        files = result.structured_content["files"]  # type: ignore[index]
        assert {f["file_id"] for f in files if f["kind"] == "file"} == set(PRINTER_FILES)
        (link,) = [f for f in files if f["kind"] == "link"]
        assert (link["url"], link["resource_uri"]) == ("https://support.example.com/kb/printer-fire", None)
        assert len([block for block in result.content if block.type == "resource_link"]) == len(PRINTER_FILES)
        assert "https://support.example.com/kb/printer-fire" in text_of(result)
        for f in files:
            if f["kind"] == "file":
                data, _ = await read_bytes(client, f["resource_uri"])
                assert data == sim.blobs[("CaseFile", f["file_id"].partition(".")[2])]


async def test_missing_rights_are_a_clear_permission_error(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    sim.denied = {"CaseFile"}
    with pytest.raises(PermissionDeniedError, match="lacks the permission") as caught:
        await crm.list_case_files(PRINTER_CASE, limit=5, cursor=None)
    assert "Insufficient permissions on object 'CaseFile'" in str(caught.value)
    before = case_files(sim)
    with pytest.raises(PermissionDeniedError):
        await crm.upload_attachment("case", PRINTER_CASE, upload(b"x"))
    assert case_files(sim) == before
    assert sim.writes("POST", "/CaseFile")[0].status == 403
