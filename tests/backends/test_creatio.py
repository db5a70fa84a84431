"""The Creatio backend against the simulator: auth, session expiry, CSRF, filters, cleanup on failure,
OAuth renewal, validation before any request, and clear errors without secrets."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from crm_mcp.backends import creatio as creatio_module
from crm_mcp.backends import vendor_class
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
)
from tests.helpers import PNG_1x1
from tests.simulators.creatio import (
    ALEXANDER_WILSON,
    EMPTY,
    JOHN_BEST,
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


async def test_expiry_before_the_bytes_removes_the_record(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    """A streamed body cannot be sent twice: the record is removed and the error says so."""
    sim.fail("PUT", "/Data", "expire")
    before = case_files(sim)
    with pytest.raises(BackendError, match="removed"):
        await crm.upload_attachment("case", PRINTER_CASE, upload(b"x" * 1000))
    assert case_files(sim) == before
    assert len(sim.writes("POST", "/CaseFile")) == 1


async def test_photo_bind_survives_expiry_midway(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    sim.fail("PATCH", "/Contact(", "expire")
    photo = await crm.bind_photo(JOHN_BEST, upload(PNG_1x1, "face.png", "image/png"))
    assert sim.row("Contact", JOHN_BEST)["PhotoId"] == photo.photo_id  # type: ignore[index]
    assert len(sim.writes("POST", "/SysImage")) == 1
    assert [p.processed for p in sim.writes("PATCH")] == [False, True]


# --------------------------------------------------------------------------------------- filters


async def test_case_files_are_filtered_by_the_lookup_path(sim: CreatioSimulator, crm: CreatioBackend) -> None:
    await crm.list_case_files(PRINTER_CASE, limit=2, cursor=None)
    listing = next(r for r in sim.requests if r.path == f"{ODATA}/CaseFile")
    assert listing.query["$filter"] == f"Case/Id eq {PRINTER_CASE}"
    assert "Data" not in listing.query["$select"]
    assert listing.query["$top"] == "3"


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
    sim.fail("GET", "/Data", "drop", times=2)
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


async def test_oauth_token_is_reused_renewed_before_expiry_and_after_401(
    sim: CreatioSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(creatio_module, "_clock", lambda: now[0])
    async with make(sim, tmp_path, auth="oauth") as crm:
        await crm.check()
        await crm.find_records("contact", "Wilson", limit=5)
        assert sim.token_requests == 1
        assert sim.logins == 0
        assert all("cookie" not in r.headers for r in odata_requests(sim))
        now[0] += 3600 - 30  # inside the renewal margin
        await crm.find_records("contact", "Wilson", limit=5)
        assert sim.token_requests == 2
        sim.expire_sessions()  # the server forgets the token early
        assert await crm.get_contact_photo(ALEXANDER_WILSON) is not None
        assert sim.token_requests == 3


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
