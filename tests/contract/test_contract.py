"""Vendor-neutral behaviour every backend must show, through the MCP tools and resources.

Written once; runs against every harness in `harnesses.HARNESSES`.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.contract.conftest import Crm
from tests.helpers import PNG_1x1, all_files, error, find_one, ok, read_bytes

pytestmark = pytest.mark.anyio


async def printer_case(crm: Crm) -> str:
    return await find_one(crm.client, "case", "Printer on fire")


# ------------------------------------------------------------------------------------------ files


async def test_case_files_are_listed_and_readable(crm: Crm) -> None:
    files = await all_files(crm.client, await printer_case(crm))
    assert len(files) >= 3
    assert len({file["mime_type"] for file in files}) >= 3
    for file in files:
        assert re.fullmatch(r"[A-Za-z0-9._~-]+", file["file_id"]), "file ids use URI-unreserved characters only"
        if file["kind"] == "link":
            assert file["resource_uri"] is None
            continue
        assert file["resource_uri"] == f"crm://{crm.backend}/files/{file['file_id']}"
        data, mime = await read_bytes(crm.client, file["resource_uri"])
        assert mime == file["mime_type"]
        if file["size"] is not None:
            assert len(data) == file["size"]


async def test_paging_covers_every_file_exactly_once(crm: Crm) -> None:
    case_id = await printer_case(crm)
    expected = [file["file_id"] for file in await all_files(crm.client, case_id)]
    seen: list[str] = []
    arguments: dict[str, object] = {"case_id": case_id, "limit": 2}
    while True:
        page = await ok(crm.client, "list_case_files", **arguments)
        seen += [file["file_id"] for file in page["files"]]
        if page["next_cursor"] is None:
            break
        arguments["cursor"] = page["next_cursor"]
    assert seen == expected


async def test_missing_case_is_not_found(crm: Crm) -> None:
    message = await error(crm.client, "list_case_files", case_id=crm.harness.missing_id)
    assert "not found" in message.lower()


async def test_malformed_case_id_is_refused(crm: Crm) -> None:
    message = await error(crm.client, "list_case_files", case_id=crm.harness.malformed_id)
    assert "not a valid id" in message


async def test_uploaded_text_is_listed_and_reads_back(crm: Crm) -> None:
    case_id = await printer_case(crm)
    entry = await ok(crm.client, "upload_attachment", record_id=case_id, file_name="c.txt", content_text="contract")
    listed = {file["file_id"]: file for file in await all_files(crm.client, case_id)}
    assert listed[entry["file_id"]]["name"] == "c.txt"
    assert await read_bytes(crm.client, entry["resource_uri"]) == (b"contract", "text/plain")


async def test_upload_to_a_missing_case_is_not_found(crm: Crm) -> None:
    message = await error(
        crm.client, "upload_attachment", record_id=crm.harness.missing_id, file_name="x.txt", content_text="x"
    )
    assert "not found" in message.lower()


async def test_upload_with_a_malformed_record_id_is_refused(crm: Crm) -> None:
    message = await error(
        crm.client, "upload_attachment", record_id=crm.harness.malformed_id, file_name="x.txt", content_text="x"
    )
    assert "not a valid id" in message


async def test_uploaded_text_reads_back_through_read_file(crm: Crm) -> None:
    entry = await ok(
        crm.client, "upload_attachment", record_id=await printer_case(crm), file_name="r.txt", content_text="line\n"
    )
    result = await crm.client.call_tool("read_file", {"resource_uri": entry["resource_uri"]})
    assert not result.is_error
    assert result.structured_content["returned_as"] == "text"
    assert result.content[-1].text == "line\n"


async def test_uploaded_binary_from_path_round_trips(crm: Crm) -> None:
    payload = random.Random(7).randbytes(700_000)
    (crm.files_root / "blob.bin").write_bytes(payload)
    entry = await ok(
        crm.client, "upload_attachment", record_id=await printer_case(crm), file_name="blob.bin", path="blob.bin"
    )
    assert entry["size"] == len(payload)
    assert (await read_bytes(crm.client, entry["resource_uri"]))[0] == payload


async def test_file_copies_to_a_contact_through_its_uri(crm: Crm) -> None:
    source = next(file for file in await all_files(crm.client, await printer_case(crm)) if file["kind"] == "file")
    contact_id = await find_one(crm.client, "contact", "John Best")
    entry = await ok(
        crm.client,
        "upload_attachment",
        record_id=contact_id,
        record_type="contact",
        file_name=source["name"],
        resource_uri=source["resource_uri"],
    )
    assert (await read_bytes(crm.client, entry["resource_uri"]))[0] == (
        await read_bytes(crm.client, source["resource_uri"])
    )[0]


class _Truncating(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2000000")
        self.end_headers()
        self.wfile.write(b"x" * 300_000)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def truncating_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Truncating)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/big.bin"
    server.shutdown()
    server.server_close()


async def test_upload_cut_off_midway_leaves_nothing(crm: Crm, truncating_url: str) -> None:
    case_id = await printer_case(crm)
    before = await all_files(crm.client, case_id)
    await error(crm.client, "upload_attachment", record_id=case_id, file_name="big.bin", url=truncating_url)
    assert await all_files(crm.client, case_id) == before


async def test_saved_file_matches_the_resource(crm: Crm) -> None:
    source = next(file for file in await all_files(crm.client, await printer_case(crm)) if file["kind"] == "file")
    saved = await ok(crm.client, "save_file", resource_uri=source["resource_uri"], path="saved.bin")
    data, _ = await read_bytes(crm.client, source["resource_uri"])
    assert (crm.files_root / "saved.bin").read_bytes() == data
    assert saved["sha256"] == hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------- photos


async def test_contact_photo_is_served(crm: Crm) -> None:
    contact_id = await find_one(crm.client, "contact", "Alexander Wilson")
    photo = (await ok(crm.client, "get_contact_photo", contact_id=contact_id))["photo"]
    assert photo is not None
    data, mime = await read_bytes(crm.client, photo["resource_uri"])
    assert mime == photo["mime_type"]
    assert mime.startswith("image/")
    assert data


async def test_small_photo_comes_inline_and_linked(crm: Crm) -> None:
    contact_id = await find_one(crm.client, "contact", "Alexander Wilson")
    result = await crm.client.call_tool("get_contact_photo", {"contact_id": contact_id})
    photo = result.structured_content["photo"]
    data, _ = await read_bytes(crm.client, photo["resource_uri"])
    assert len(data) <= 262_144, "the harness's photo of Alexander Wilson must be small enough to inline"
    (image,) = [block for block in result.content if block.type == "image"]
    (link,) = [block for block in result.content if block.type == "resource_link"]
    assert base64.b64decode(image.data) == data
    assert link.uri == photo["resource_uri"]


async def test_malformed_contact_id_is_refused(crm: Crm) -> None:
    message = await error(crm.client, "get_contact_photo", contact_id=crm.harness.malformed_id)
    assert "not a valid id" in message


async def test_contact_without_photo_has_none(crm: Crm) -> None:
    contact_id = await find_one(crm.client, "contact", "John Best")
    assert (await ok(crm.client, "get_contact_photo", contact_id=contact_id))["photo"] is None


async def test_missing_contact_is_not_found(crm: Crm) -> None:
    message = await error(crm.client, "get_contact_photo", contact_id=crm.harness.missing_id)
    assert "not found" in message.lower()


async def test_bound_photo_reads_back(crm: Crm) -> None:
    contact_id = await find_one(crm.client, "contact", "John Best")
    (crm.files_root / "face.png").write_bytes(PNG_1x1)
    await ok(crm.client, "bind_photo", contact_id=contact_id, path="face.png")
    photo = (await ok(crm.client, "get_contact_photo", contact_id=contact_id))["photo"]
    assert await read_bytes(crm.client, photo["resource_uri"]) == (PNG_1x1, "image/png")


async def test_rebinding_replaces_the_photo(crm: Crm) -> None:
    contact_id = await find_one(crm.client, "contact", "Alexander Wilson")
    (crm.files_root / "face.png").write_bytes(PNG_1x1)
    first = await ok(crm.client, "bind_photo", contact_id=contact_id, path="face.png")
    second = await ok(crm.client, "bind_photo", contact_id=contact_id, path="face.png")
    current = (await ok(crm.client, "get_contact_photo", contact_id=contact_id))["photo"]
    assert current["photo_id"] == second["photo"]["photo_id"]
    assert first["photo"]["resource_uri"] == current["resource_uri"]


async def test_non_image_photo_is_refused_and_the_old_one_stays(crm: Crm) -> None:
    contact_id = await find_one(crm.client, "contact", "Alexander Wilson")
    before = await ok(crm.client, "get_contact_photo", contact_id=contact_id)
    await error(crm.client, "bind_photo", contact_id=contact_id, content_text="plain text", file_name="x.txt")
    assert await ok(crm.client, "get_contact_photo", contact_id=contact_id) == before


# ------------------------------------------------------------------------------------------- find


async def test_find_contact_by_full_name(crm: Crm) -> None:
    records = (await ok(crm.client, "find_records", record_type="contact", query="Alexander Wilson"))["records"]
    assert [record["title"] for record in records] == ["Alexander Wilson"]


async def test_find_case_by_subject_words(crm: Crm) -> None:
    records = (await ok(crm.client, "find_records", record_type="case", query="printer"))["records"]
    assert any("Printer on fire" in record["title"] for record in records)


async def test_find_without_match_is_empty(crm: Crm) -> None:
    records = (await ok(crm.client, "find_records", record_type="contact", query="Zebulon Quux"))["records"]
    assert records == []


async def test_backend_is_listed_with_its_vendor(crm: Crm) -> None:
    backends = (await ok(crm.client, "list_backends"))["backends"]
    assert crm.backend in [backend["name"] for backend in backends]
