"""The SuperOffice backend against the simulator: SOAP 1.1 envelopes as the WSDL defines them, ticket
reuse and renewal, clear errors from ExceptionInfo and faults, streamed base64 both ways, cleanup after
a failed upload, empty person images, and id validation before any request."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import httpx
import pytest
from pydantic import ValidationError

from crm_mcp.backends import _soap, vendor_class
from crm_mcp.backends.base import BackendContext, Upload
from crm_mcp.backends.superoffice import SuperOfficeBackend, SuperOfficeSettings
from crm_mcp.errors import AuthenticationError, BackendError, InvalidInputError, NotFoundError
from tests.helpers import PNG_1x1
from tests.simulators.superoffice import (
    ALEXANDER_WILSON,
    JOHN_BEST,
    NS,
    PRINTER_TICKET,
    SOAP11,
    SOAP12,
    SuperOfficeSimulator,
    contract_simulator,
)

pytestmark = pytest.mark.anyio

LIMIT = 64 * 1024 * 1024
URL = "https://sod.superoffice.test/Cust12345"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sim() -> SuperOfficeSimulator:
    return contract_simulator()


def make(sim: SuperOfficeSimulator, tmp_path: Path, **values: Any) -> SuperOfficeBackend:
    settings: dict[str, Any] = {"vendor": "superoffice", "url": URL}
    if not {"ticket", "access_token", "username"} & values.keys():
        settings |= {"username": sim.username, "password": sim.password}
    context = BackendContext(home=tmp_path, max_transfer_bytes=LIMIT, transport=httpx.ASGITransport(app=sim))
    return SuperOfficeBackend("so", SuperOfficeSettings.model_validate(settings | values), context)


@pytest.fixture
async def crm(sim: SuperOfficeSimulator, tmp_path: Path) -> AsyncIterator[SuperOfficeBackend]:
    async with make(sim, tmp_path) as backend:
        yield backend


async def _chunks(data: bytes, size: int = 65_536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def upload(data: bytes, name: str = "f.bin", mime: str = "application/octet-stream") -> Upload:
    return Upload(name, mime, len(data), _chunks(data))


async def read_all(crm: SuperOfficeBackend, file_id: str) -> bytes:
    async with crm.open_file(file_id) as download:
        return b"".join([chunk async for chunk in download.chunks])


# ------------------------------------------------------------------------------------ registry


def test_vendor_is_registered() -> None:
    assert vendor_class("superoffice") is SuperOfficeBackend


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"username": "u"},
        {"username": "u", "password": "p", "ticket": "7T:x"},
        {"ticket": "7T:x", "access_token": "8A:y"},
        {"ticket": "7T:x", "url": "ftp://x"},
    ],
)
def test_settings_need_exactly_one_way_to_log_in(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SuperOfficeSettings.model_validate({"vendor": "superoffice", "url": URL} | values)


# ------------------------------------------------------------------------------------ envelopes


async def test_envelopes_are_soap11_with_headers_inside_the_header(
    sim: SuperOfficeSimulator, crm: SuperOfficeBackend
) -> None:
    await crm.list_case_files(str(PRINTER_TICKET), limit=10, cursor=None)
    assert [entry.operation for entry in sim.requests] == [
        "AuthenticateUsernamePassword",
        "GetTicket",
        "GetTicketAttachments",
    ]
    for entry in sim.requests:
        assert entry.status == 200
        assert entry.headers["soapaction"] == f'"{NS}/{entry.agent}/{entry.operation}"'
        assert entry.headers["content-type"].startswith("text/xml")
        envelope = ET.fromstring(entry.body)
        assert envelope.tag == f"{{{SOAP11}}}Envelope"
        assert [item.tag for item in envelope] == [f"{{{SOAP11}}}Header", f"{{{SOAP11}}}Body"]
        header, body = envelope
        assert body[0].tag == f"{{{NS}}}{entry.operation}"
        names = [item.tag for item in header]
        if entry.agent == "SoPrincipal":
            assert f"{{{NS}}}Credentials" not in names
        else:
            assert names == [f"{{{NS}}}Credentials", f"{{{NS}}}TimeZone"]
            assert header.find(f"{{{NS}}}Credentials/{{{NS}}}Ticket").text.startswith("7T:")  # type: ignore[union-attr]
            assert header.find(f"{{{NS}}}TimeZone/{{{NS}}}SoTimeZoneLocationCode").text == "UTC"  # type: ignore[union-attr]


async def test_application_token_is_sent_and_checked(tmp_path: Path) -> None:
    sim = contract_simulator(application_token="app-token-1234")
    async with make(sim, tmp_path, application_token="app-token-1234") as crm:
        assert await crm.get_contact_photo(str(JOHN_BEST)) is None
    assert all(
        ET.fromstring(entry.body).find(f"{{{SOAP11}}}Header/{{{NS}}}ApplicationToken") is not None
        for entry in sim.requests
    )
    async with make(sim, tmp_path, application_token="wrong-token-99") as crm:
        with pytest.raises(AuthenticationError) as caught:
            await crm.get_contact_photo(str(JOHN_BEST))
    assert "wrong-token-99" not in str(caught.value)


@pytest.mark.parametrize(
    ("envelope_ns", "content_type", "outside"),
    [(SOAP12, "application/soap+xml; charset=utf-8", False), (SOAP11, "text/xml", True), (SOAP12, "text/xml", False)],
)
async def test_simulator_refuses_what_the_documentation_examples_send(
    sim: SuperOfficeSimulator, envelope_ns: str, content_type: str, outside: bool
) -> None:
    """The docs' examples (SOAP 1.2, headers outside Header) are refused as the real service would."""
    headers = "<tns:Credentials><tns:Ticket>7T:x</tns:Ticket></tns:Credentials>"
    text = (
        f'<e:Envelope xmlns:e="{envelope_ns}" xmlns:tns="{NS}">{headers if outside else ""}'
        f"<e:Header>{'' if outside else headers}</e:Header>"
        "<e:Body><tns:GetTicket><tns:TicketId>1</tns:TicketId></tns:GetTicket></e:Body></e:Envelope>"
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=URL + "/") as client:
        response = await client.post(
            "Remote/Services88/Ticket.svc",
            content=text,
            headers={"Content-Type": content_type, "SOAPAction": f'"{NS}/Ticket/GetTicket"'},
        )
    assert response.status_code == 500
    assert b"Fault" in response.content


async def test_simulator_refuses_a_wrong_soapaction_and_a_body_off_schema(sim: SuperOfficeSimulator) -> None:
    async def post(body: str, action: str) -> httpx.Response:
        text, _, _ = _soap.envelope_text("GetTicket", [], [])
        text = text.replace("<tns:GetTicket></tns:GetTicket>", body)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=URL + "/") as client:
            return await client.post(
                "Remote/Services88/Ticket.svc",
                content=text,
                headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": action},
            )

    good = "<tns:GetTicket><tns:TicketId>1</tns:TicketId></tns:GetTicket>"
    wrong_action = await post(good, f'"{NS}/BLOB/GetTicket"')
    assert wrong_action.status_code == 500
    assert b"ContractFilter" in wrong_action.content
    off_schema = await post("<tns:GetTicket><tns:TicketNo>1</tns:TicketNo></tns:GetTicket>", f'"{NS}/Ticket/GetTicket"')
    assert off_schema.status_code == 500
    assert b"TicketNo" in off_schema.content
    not_an_int = await post("<tns:GetTicket><tns:TicketId>x</tns:TicketId></tns:GetTicket>", f'"{NS}/Ticket/GetTicket"')
    assert b"xs:int" in not_an_int.content


# ------------------------------------------------------------------------------------------- auth


async def test_the_ticket_is_reused(sim: SuperOfficeSimulator, crm: SuperOfficeBackend) -> None:
    for _ in range(3):
        await crm.list_case_files(str(PRINTER_TICKET), limit=10, cursor=None)
    assert sim.logins == 1


@pytest.mark.parametrize("style", ["header", "fault"])
async def test_an_expired_ticket_is_renewed_and_reads_recover(tmp_path: Path, style: str) -> None:
    sim = contract_simulator(expiry_style=style)
    async with make(sim, tmp_path) as crm:
        first = await crm.list_case_files(str(PRINTER_TICKET), limit=10, cursor=None)
        sim.fail("GetTicketAttachments", "expire")
        again = await crm.list_case_files(str(PRINTER_TICKET), limit=10, cursor=None)
        sim.expire_tickets()
        data = await read_all(crm, first.files[0].file_id)
    assert again == first
    assert data.startswith(b"09:14")
    assert sim.logins == 3


async def test_failed_authentication_is_a_clear_error(sim: SuperOfficeSimulator, tmp_path: Path) -> None:
    async with make(sim, tmp_path, username=sim.username, password="not-the-password") as crm:
        with pytest.raises(AuthenticationError) as caught:
            await crm.check()
    message = str(caught.value)
    assert "AuthenticationSucceeded = false" in message
    assert "not-the-password" not in message
    assert "<" not in message


async def test_access_token_is_exchanged_for_a_ticket(sim: SuperOfficeSimulator, tmp_path: Path) -> None:
    async with make(sim, tmp_path, access_token=sim.access_token) as crm:
        assert "access token" in await crm.check()
    assert sim.calls("AuthenticateWithAccessToken")


async def test_a_preissued_ticket_is_used_and_its_expiry_is_clear(sim: SuperOfficeSimulator, tmp_path: Path) -> None:
    sim.tickets["7T:pre-issued-ticket"] = 1
    async with make(sim, tmp_path, ticket="7T:pre-issued-ticket") as crm:
        assert await crm.get_contact_photo(str(JOHN_BEST)) is None
        sim.expire_tickets()
        with pytest.raises(AuthenticationError) as caught:
            await crm.get_contact_photo(str(JOHN_BEST))
    assert "pre-issued" not in str(caught.value)
    assert sim.logins == 0


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("style", ["header", "fault"])
async def test_errors_from_exception_info_and_faults_are_surfaced(tmp_path: Path, style: str) -> None:
    sim = contract_simulator(error_style=style)
    async with make(sim, tmp_path) as crm:
        sim.fail("GetTicketAttachments", "header")
        with pytest.raises(BackendError) as caught:
            await crm.list_case_files(str(PRINTER_TICKET), limit=10, cursor=None)
    message = str(caught.value)
    assert "Try again later" in message  # FriendlyText
    assert "<" not in message
    assert sim.password not in message


async def test_a_dropped_download_is_retried_then_an_error(sim: SuperOfficeSimulator, crm: SuperOfficeBackend) -> None:
    files = (await crm.list_case_files(str(PRINTER_TICKET), limit=10, cursor=None)).files
    sim.fail("GetAttachmentStream", "drop")  # once: a read is sent again
    assert await read_all(crm, files[1].file_id)
    sim.fail("GetAttachmentStream", "drop", times=3)  # as often as a read is tried
    with pytest.raises(BackendError):
        await read_all(crm, files[1].file_id)


# ------------------------------------------------------------------------------------------- files


async def test_missing_ticket_is_not_found_not_empty(crm: SuperOfficeBackend) -> None:
    with pytest.raises(NotFoundError, match="case 999999 was not found"):
        await crm.list_case_files("999999", limit=10, cursor=None)


async def test_upload_goes_to_a_new_internal_message(sim: SuperOfficeSimulator, crm: SuperOfficeBackend) -> None:
    customer = {key: (message.body, list(message.attachments)) for key, message in sim.messages.items()}
    entry = await crm.upload_attachment("case", str(PRINTER_TICKET), upload(b"hello", "n.txt", "text/plain"))
    new = [message for key, message in sim.messages.items() if key not in customer]
    assert len(new) == 1
    assert new[0].slevel == "Internal"
    assert new[0].attachments == [int(entry.file_id.removeprefix("att-"))]
    assert {key: (sim.messages[key].body, sim.messages[key].attachments) for key in customer} == customer
    assert [call.operation for call in sim.requests[-4:]] == [
        "SaveAttachmentEntity",
        "UploadAttachment",
        "SaveTicketMessageEntity",
        "AddAttachments",
    ]
    assert await read_all(crm, entry.file_id) == b"hello"


async def test_upload_body_is_streamed_in_many_chunks(sim: SuperOfficeSimulator, crm: SuperOfficeBackend) -> None:
    data = random.Random(3).randbytes(1_000_003)
    pulled = 0

    async def counting() -> AsyncIterator[bytes]:
        nonlocal pulled
        async for chunk in _chunks(data, 10_000):
            pulled += 1
            yield chunk

    entry = await crm.upload_attachment(
        "case", str(PRINTER_TICKET), Upload("r.bin", "application/octet-stream", len(data), counting())
    )
    assert pulled == 101
    (call,) = sim.calls("UploadAttachment")
    assert call.chunks > 10  # the body reached the server piece by piece
    # ... with its exact length announced up front (IIS-hosted WCF services need no chunked encoding).
    assert "transfer-encoding" not in call.headers
    assert int(call.headers["content-length"]) > 4 * len(data) // 3
    assert await read_all(crm, entry.file_id) == data


@pytest.mark.parametrize("step", ["UploadAttachment", "SaveTicketMessageEntity", "AddAttachments"])
async def test_a_failed_upload_leaves_nothing_attached(
    sim: SuperOfficeSimulator, crm: SuperOfficeBackend, step: str
) -> None:
    before = await crm.list_case_files(str(PRINTER_TICKET), limit=100, cursor=None)
    messages = dict(sim.messages)
    sim.fail(step, "fault-after" if step == "AddAttachments" else "fault")
    with pytest.raises(BackendError) as caught:
        await crm.upload_attachment("case", str(PRINTER_TICKET), upload(b"x" * 5000))
    if step == "AddAttachments":
        # processed, then failed: the message carrying it is deleted again
        assert sim.calls("DeleteTicketMessageEntity")
    assert sim.messages.keys() == messages.keys()
    assert await crm.list_case_files(str(PRINTER_TICKET), limit=100, cursor=None) == before
    assert "nothing was attached" in str(caught.value)


async def test_a_message_whose_creation_answer_was_lost_is_found_and_removed(
    sim: SuperOfficeSimulator, crm: SuperOfficeBackend
) -> None:
    messages = dict(sim.messages)
    sim.fail("SaveTicketMessageEntity", "drop")  # created, but the answer never arrives whole
    with pytest.raises(BackendError, match="nothing was attached"):
        await crm.upload_attachment("case", str(PRINTER_TICKET), upload(b"x" * 5000))
    (search,) = [call for call in sim.calls("GetArchiveListByColumns") if b"TicketMessage" in call.body]
    assert b"<tns:Operator>=</tns:Operator>" in search.body  # restricted to the ticket, by reference
    assert sim.calls("DeleteTicketMessageEntity")
    assert sim.messages.keys() == messages.keys()


async def test_a_document_whose_creation_answer_was_lost_is_found_and_removed(
    sim: SuperOfficeSimulator, crm: SuperOfficeBackend
) -> None:
    sim.fail("SaveDocumentEntity", "drop")
    with pytest.raises(BackendError, match="found and removed"):
        await crm.upload_attachment("contact", str(JOHN_BEST), upload(b"x" * 5000))
    assert sim.calls("DeleteDocumentEntity")
    assert sim.documents == {}


async def test_a_truncated_source_sends_no_complete_upload(sim: SuperOfficeSimulator, crm: SuperOfficeBackend) -> None:
    before = await crm.list_case_files(str(PRINTER_TICKET), limit=100, cursor=None)
    with pytest.raises(BackendError, match="truncated"):
        await crm.upload_attachment(
            "case", str(PRINTER_TICKET), Upload("t.bin", "application/octet-stream", 200_000, _chunks(b"y" * 50_000))
        )
    assert not sim.calls("SaveTicketMessageEntity")
    assert await crm.list_case_files(str(PRINTER_TICKET), limit=100, cursor=None) == before


async def test_a_file_attached_to_a_contact_is_a_document(sim: SuperOfficeSimulator, crm: SuperOfficeBackend) -> None:
    entry = await crm.upload_attachment("contact", str(JOHN_BEST), upload(b"%PDF-1.4 x", "cv.pdf", "application/pdf"))
    assert entry.file_id.startswith("doc-")
    (document,) = sim.documents.values()
    assert document.person == JOHN_BEST
    assert await read_all(crm, entry.file_id) == b"%PDF-1.4 x"


async def test_a_failed_document_upload_removes_the_document(
    sim: SuperOfficeSimulator, crm: SuperOfficeBackend
) -> None:
    sim.fail("SetDocumentStream", "fault")
    with pytest.raises(BackendError, match="removed again"):
        await crm.upload_attachment("contact", str(JOHN_BEST), upload(b"data", "a.txt", "text/plain"))
    assert sim.calls("DeleteDocumentEntity")
    assert sim.documents == {}


async def test_the_document_template_and_company_are_sent(sim: SuperOfficeSimulator, tmp_path: Path) -> None:
    async with make(sim, tmp_path, document_template_id=7) as crm:
        await crm.upload_attachment("contact", str(JOHN_BEST), upload(b"data", "a.txt", "text/plain"))
    (save,) = sim.calls("SaveDocumentEntity")
    entity = ET.fromstring(save.body).find(f"{{{SOAP11}}}Body/{{{NS}}}SaveDocumentEntity/{{{NS}}}DocumentEntity")
    assert entity.findtext(f"{{{NS}}}DocumentTemplate/{{{NS}}}DocumentTemplateId") == "7"  # type: ignore[union-attr]
    assert entity.findtext(f"{{{NS}}}Contact/{{{NS}}}ContactId") == "2"  # type: ignore[union-attr]


async def test_an_expired_ticket_during_a_streamed_upload_is_reported_and_renewed(
    sim: SuperOfficeSimulator, crm: SuperOfficeBackend
) -> None:
    before = await crm.list_case_files(str(PRINTER_TICKET), limit=100, cursor=None)
    sim.fail("UploadAttachment", "expire")
    with pytest.raises(BackendError, match="expired"):
        await crm.upload_attachment("case", str(PRINTER_TICKET), upload(b"z" * 1000))
    assert sim.logins == 2  # renewed for the next call, which then works
    entry = await crm.upload_attachment("case", str(PRINTER_TICKET), upload(b"z" * 1000))
    after = await crm.list_case_files(str(PRINTER_TICKET), limit=100, cursor=None)
    assert [file.file_id for file in after.files] == [*(file.file_id for file in before.files), entry.file_id]


# ------------------------------------------------------------------------------------------ photos


async def test_an_empty_person_image_is_no_photo(sim: SuperOfficeSimulator, crm: SuperOfficeBackend) -> None:
    assert await crm.get_contact_photo(str(JOHN_BEST)) is None
    (call,) = sim.calls("GetPersonImage")
    assert call.status == 200  # SuperOffice answers "no image" with an empty Response, not an error
    with pytest.raises(NotFoundError, match="no photo"):
        async with crm.open_contact_photo(str(JOHN_BEST)):
            pass


async def test_a_missing_person_is_not_found_before_the_image_is_asked(
    sim: SuperOfficeSimulator, crm: SuperOfficeBackend
) -> None:
    with pytest.raises(NotFoundError, match="contact 999999 was not found"):
        await crm.get_contact_photo("999999")
    assert not sim.calls("GetPersonImage")


async def test_bind_photo_is_save_image_stream_then_change_person_image(
    sim: SuperOfficeSimulator, crm: SuperOfficeBackend
) -> None:
    photo = await crm.bind_photo(str(JOHN_BEST), upload(PNG_1x1, "face.png", "image/png"))
    (save,) = sim.calls("SaveImageStream")
    body = ET.fromstring(save.body).find(f"{{{SOAP11}}}Body/{{{NS}}}SaveImageStream")
    assert [item.tag.rpartition("}")[2] for item in body] == ["Type", "Image", "Description"]  # type: ignore[union-attr]
    assert body.find(f"{{{NS}}}Type").text == "PersonImage"  # type: ignore[union-attr]
    assert sim.calls("ChangePersonImage")
    assert sim.persons[JOHN_BEST].image == int(photo.photo_id)
    current = await crm.get_contact_photo(str(JOHN_BEST))
    assert current is not None
    assert (current.photo_id, current.mime_type) == (photo.photo_id, "image/png")
    async with crm.open_contact_photo(str(JOHN_BEST)) as download:
        assert b"".join([chunk async for chunk in download.chunks]) == PNG_1x1


@pytest.mark.parametrize("kind", ["fault", "header"])
async def test_a_refused_bind_leaves_the_old_photo_and_no_stored_image(
    sim: SuperOfficeSimulator, crm: SuperOfficeBackend, kind: str
) -> None:
    old = sim.persons[ALEXANDER_WILSON].image
    blobs = set(sim.blobs)
    sim.fail("ChangePersonImage", kind)
    with pytest.raises(BackendError, match="unchanged and the stored image was deleted"):
        await crm.bind_photo(str(ALEXANDER_WILSON), upload(PNG_1x1, "face.png", "image/png"))
    assert sim.persons[ALEXANDER_WILSON].image == old
    assert set(sim.blobs) == blobs  # the image SaveImageStream stored is gone again


@pytest.mark.parametrize("kind", ["drop", "fault-after"])
async def test_a_bind_whose_answer_is_lost_is_checked_not_undone(
    sim: SuperOfficeSimulator, crm: SuperOfficeBackend, kind: str
) -> None:
    sim.fail("ChangePersonImage", kind)
    photo = await crm.bind_photo(str(ALEXANDER_WILSON), upload(PNG_1x1, "face.png", "image/png"))
    person = sim.persons[ALEXANDER_WILSON]
    assert person.image == int(photo.photo_id)
    assert person.image in sim.blobs  # not half-bound: the linked image still exists
    assert not sim.calls("DeleteBlobEntity")


# -------------------------------------------------------------------------------------------- find


async def test_find_ticket_by_number_and_title(crm: SuperOfficeBackend) -> None:
    by_number = await crm.find_records("case", f"#{PRINTER_TICKET}", limit=5)
    assert [record.id for record in by_number] == [str(PRINTER_TICKET)]
    by_title = await crm.find_records("case", "wrong vat", limit=5)
    assert [record.title for record in by_title] == ["#1002 · Invoice shows the wrong VAT"]


async def test_find_person_with_a_quote(crm: SuperOfficeBackend) -> None:
    records = await crm.find_records("contact", "o'brien", limit=5)
    assert [record.title for record in records] == ["Pat O'Brien"]


# ---------------------------------------------------------------------------------- id validation


@pytest.mark.parametrize("bad", ["abc", "0", "-1", "1.5", "", "99999999999", "\uff11\uff12"])
async def test_ids_are_validated_before_any_request(
    sim: SuperOfficeSimulator, crm: SuperOfficeBackend, bad: str
) -> None:
    calls = [
        crm.list_case_files(bad, limit=5, cursor=None),
        crm.get_contact_photo(bad),
        crm.upload_attachment("case", bad, upload(b"x")),
        crm.upload_attachment("contact", bad, upload(b"x")),
        crm.bind_photo(bad, upload(PNG_1x1, "p.png", "image/png")),
    ]
    for call in calls:
        with pytest.raises(InvalidInputError, match="not a valid id"):
            await call
    for opener in (crm.open_contact_photo(bad), crm.open_file(f"att-{bad}"), crm.open_file(bad)):
        with pytest.raises(InvalidInputError, match="not a valid id"):
            async with opener:
                pass
    assert sim.requests == []


# ------------------------------------------------------------------------------------------ memory


@contextmanager
def _simulator_process() -> Iterator[str]:
    """The simulator in its own process, so this process's memory is the backend's alone."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.simulators.superoffice"],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("http://"), line
        yield line
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.integration
async def test_a_30_mib_attachment_round_trips_with_little_memory(tmp_path: Path) -> None:
    size = 30 * 1024 * 1024
    block = random.Random(5).randbytes(1024 * 1024)

    async def source() -> AsyncIterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    expected = hashlib.sha256(block * (size // len(block))).hexdigest()
    sim = SuperOfficeSimulator()
    with _simulator_process() as url:
        settings = SuperOfficeSettings(vendor="superoffice", url=url, username=sim.username, password=sim.password)  # type: ignore[arg-type]
        context = BackendContext(home=tmp_path, max_transfer_bytes=LIMIT)
        async with SuperOfficeBackend("so", settings, context) as crm:
            await crm.check()
            tracemalloc.start()
            try:
                entry = await crm.upload_attachment(
                    "case", str(PRINTER_TICKET), Upload("big.bin", "application/octet-stream", size, source())
                )
                _, upload_peak = tracemalloc.get_traced_memory()
                tracemalloc.reset_peak()
                digest = hashlib.sha256()
                received = 0
                async with crm.open_file(entry.file_id) as download:
                    assert download.size == size
                    async for chunk in download.chunks:
                        digest.update(chunk)
                        received += len(chunk)
                _, download_peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert received == size
    assert digest.hexdigest() == expected
    # Well below the file's 30 MiB (40 MiB as base64): a few pieces at a time.
    assert upload_peak < 8 * 1024 * 1024, upload_peak
    assert download_peak < 8 * 1024 * 1024, download_peak
