"""Resources: the two templates, crm://backends, and reads with each file's own MIME type."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from crm_mcp import resources
from crm_mcp.app import open_app
from crm_mcp.backends import _demo as demo
from crm_mcp.backends.base import Download, Upload
from crm_mcp.config import Settings
from crm_mcp.errors import BackendError, TooLargeError
from crm_mcp.server import build_server
from tests.helpers import MISSING_GUID, all_files, find_one

pytestmark = pytest.mark.anyio


async def test_templates_are_listed(client: Client) -> None:
    templates = {template.uri_template for template in (await client.list_resource_templates()).resource_templates}
    assert templates == {"crm://{backend}/files/{file_id}", "crm://{backend}/contacts/{contact_id}/photo"}


async def test_backends_resource_is_json(client: Client) -> None:
    resources = {str(resource.uri) for resource in (await client.list_resources()).resources}
    assert "crm://backends" in resources
    (content,) = (await client.read_resource("crm://backends")).contents
    assert content.mime_type == "application/json"
    document = json.loads(content.text)
    assert document["backends"][0]["name"] == "local"
    assert document["backends"][0]["capabilities"]["contact_photos"] is True


async def test_each_file_is_served_with_its_own_mime_type(client: Client) -> None:
    case_id = await find_one(client, "case", "Printer on fire")
    files = await all_files(client, case_id)
    served = {(await client.read_resource(file["resource_uri"])).contents[0].mime_type for file in files}
    assert served == {file["mime_type"] for file in files}
    assert len(served) >= 3


async def test_missing_file_is_resource_not_found(client: Client) -> None:
    with pytest.raises(MCPError) as caught:
        await client.read_resource(f"crm://local/files/{MISSING_GUID}")
    assert caught.value.error.code == -32602


async def test_photo_of_contact_without_one_is_not_found(client: Client) -> None:
    contact_id = await find_one(client, "contact", "John Best")
    with pytest.raises(MCPError) as caught:
        await client.read_resource(f"crm://local/contacts/{contact_id}/photo")
    assert caught.value.error.code == -32602
    assert "no photo" in caught.value.error.message


async def test_malformed_file_id_is_an_error(client: Client) -> None:
    with pytest.raises(MCPError, match="not a valid id"):
        await client.read_resource("crm://local/files/not-a-guid")


async def test_unknown_backend_in_uri_is_not_found(client: Client) -> None:
    with pytest.raises(MCPError, match="no backend named 'other'"):
        await client.read_resource(f"crm://other/files/{MISSING_GUID}")


async def test_a_long_read_reports_progress_up_to_its_size(settings: Settings) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB
    async with open_app(settings) as app:
        crm = app.backend("local")

        async def chunks() -> AsyncIterator[bytes]:
            yield payload

        upload = Upload(name="big.bin", mime_type="application/octet-stream", size=len(payload), chunks=chunks())
        entry = await crm.upload_attachment("case", demo.CASE_PRINTER_ON_FIRE, upload)
        updates: list[tuple[int, int | None]] = []

        async def progress(done: int, total: int | None) -> None:
            updates.append((done, total))

        contents = await resources.read_resource(app, f"crm://local/files/{entry.file_id}", progress)
    assert contents.content == payload
    assert contents.mime_type == "application/octet-stream"
    assert len(updates) > 1
    assert updates[-1] == (len(payload), len(payload))


async def test_a_read_over_the_transfer_limit_is_refused_with_the_limit(make_settings: Callable[..., Settings]) -> None:
    async with Client(build_server(make_settings("[limits]\nmax_transfer_bytes = 100\n"))) as client:
        contact_id = await find_one(client, "contact", "Alexander Wilson")
        with pytest.raises(MCPError, match="transfer limit of 100 bytes"):
            await client.read_resource(f"crm://local/contacts/{contact_id}/photo")


async def test_backends_resource_shows_no_settings_beyond_name_and_vendor(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    store = tmp_path / "secret-store-path"
    async with Client(build_server(make_settings(f'[backends.local]\nvendor = "local"\npath = "{store}"\n'))) as client:
        (content,) = (await client.read_resource("crm://backends")).contents
    assert str(store) not in content.text
    assert set(json.loads(content.text)["backends"][0]) == {"name", "vendor", "default", "capabilities"}


# ------------------------------------------------------------------------------------------ read_all

MiB = 1024 * 1024


def _download(pieces: list[bytes], size: int | None, sent: list[int] | None = None) -> Download:
    async def chunks() -> AsyncIterator[bytes]:
        for piece in pieces:
            if sent is not None:
                sent.append(len(piece))
            yield piece

    return Download(name="f.bin", mime_type="application/octet-stream", size=size, chunks=chunks())


async def test_read_all_returns_the_chunks_joined() -> None:
    pieces = [b"abc", b"", b"defgh", b"i" * 70_000]
    assert await resources.read_all(_download(pieces, sum(map(len, pieces))), limit=MiB) == b"".join(pieces)


async def test_read_all_holds_a_file_once_not_twice() -> None:
    """`bytes(bytearray)` copied the whole file at the end; the BytesIO's buffer is handed over instead."""
    size = 8 * MiB
    pieces = [bytes(MiB)] * 8
    tracemalloc.start()
    try:
        data = await resources.read_all(_download(pieces, size), limit=2 * size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data) == size
    assert peak < 1.5 * size


async def test_read_all_without_a_size_stops_at_the_chunk_that_passes_the_limit() -> None:
    sent: list[int] = []
    with pytest.raises(TooLargeError, match="grew past this server's transfer limit of 10 bytes"):
        await resources.read_all(_download([b"123456", b"789012", b"never read"], None, sent), limit=10)
    assert sent == [6, 6]


async def test_read_all_of_exactly_the_limit_is_accepted() -> None:
    assert await resources.read_all(_download([b"12345", b"67890"], None), limit=10) == b"1234567890"


async def test_read_all_refuses_a_stream_shorter_than_announced() -> None:
    with pytest.raises(BackendError, match=r"sent 3 bytes of 'f\.bin' but announced 5"):
        await resources.read_all(_download([b"abc"], 5), limit=10)
