"""Every tool through the in-process MCP client, on the local backend with its demo data."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from crm_mcp.backends import _demo as demo
from crm_mcp.backends.base import Download, FileEntry, RecordType, Upload
from crm_mcp.backends.local import LocalBackend
from crm_mcp.config import Settings
from crm_mcp.server import build_server
from tests.helpers import MISSING_GUID, PNG_1x1, all_files, call, error, find_one, ok, read_bytes, text_of

pytestmark = pytest.mark.anyio

# ------------------------------------------------------------------------------------ tools/list


async def test_lists_the_eight_tools_with_titles_and_schemas(client: Client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {
        "list_case_files",
        "get_contact_photo",
        "upload_attachment",
        "bind_photo",
        "find_records",
        "read_file",
        "save_file",
        "list_backends",
    }
    for tool in tools.values():
        assert tool.title
        assert tool.description and len(tool.description) > 40
        assert tool.output_schema and tool.output_schema["type"] == "object"


@pytest.mark.parametrize(
    ("tool", "read_only", "destructive", "idempotent", "open_world"),
    [
        ("list_case_files", True, False, True, True),
        ("get_contact_photo", True, False, True, True),
        ("find_records", True, False, True, True),
        ("read_file", True, False, True, True),
        ("list_backends", True, False, True, True),
        ("upload_attachment", False, False, False, True),
        ("bind_photo", False, True, True, True),
        ("save_file", False, True, True, False),
    ],
)
async def test_annotations(
    client: Client, tool: str, read_only: bool, destructive: bool, idempotent: bool, open_world: bool
) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    hints = tools[tool].annotations
    assert hints is not None
    assert (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint, hints.open_world_hint) == (
        read_only,
        destructive,
        idempotent,
        open_world,
    )


# ------------------------------------------------------------------------------- list_case_files


async def test_list_case_files_returns_files_links_and_complete_text(client: Client) -> None:
    case_id = await find_one(client, "case", "Printer on fire")
    result = await call(client, "list_case_files", case_id=case_id)
    files = result.structured_content["files"]
    assert len(files) >= 3
    assert len({file["mime_type"] for file in files}) >= 3
    links = [block for block in result.content if block.type == "resource_link"]
    assert [link.uri for link in links] == [file["resource_uri"] for file in files]
    text = text_of(result)
    for file in files:
        assert file["name"] in text and file["resource_uri"] in text and file["mime_type"] in text


async def test_listed_size_and_type_match_the_bytes(client: Client) -> None:
    case_id = await find_one(client, "case", "Printer on fire")
    for file in await all_files(client, case_id):
        data, mime = await read_bytes(client, file["resource_uri"])
        assert len(data) == file["size"]
        assert mime == file["mime_type"]


async def test_paging_walks_every_file_once(client: Client) -> None:
    case_id = await find_one(client, "case", "Printer on fire")
    expected = [file["file_id"] for file in await all_files(client, case_id)]
    seen: list[str] = []
    cursor = None
    while True:
        arguments = {"case_id": case_id, "limit": 1} | ({"cursor": cursor} if cursor else {})
        page = await ok(client, "list_case_files", **arguments)
        seen += [file["file_id"] for file in page["files"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected


async def test_bad_cursor_is_a_clear_error(client: Client) -> None:
    case_id = await find_one(client, "case", "Printer on fire")
    assert "cursor" in await error(client, "list_case_files", case_id=case_id, cursor="bogus")


@pytest.mark.parametrize("limit", [0, 201])
async def test_limit_out_of_range_is_refused(client: Client, limit: int) -> None:
    message = await error(client, "list_case_files", case_id=MISSING_GUID, limit=limit)
    assert message.startswith("Invalid arguments for list_case_files: limit:")


async def test_missing_argument_is_named(client: Client) -> None:
    assert "case_id: required argument is missing" in await error(client, "list_case_files")


async def test_missing_case_is_not_found_not_empty(client: Client) -> None:
    assert "not found" in (await error(client, "list_case_files", case_id=MISSING_GUID)).lower()


async def test_malformed_case_id_is_refused_before_any_lookup(client: Client) -> None:
    assert "not a valid id" in await error(client, "list_case_files", case_id="CS-1001'; drop")


async def test_unknown_backend_names_the_configured_ones(client: Client) -> None:
    message = await error(client, "list_case_files", case_id=MISSING_GUID, backend="salesforce")
    assert "no backend named 'salesforce'" in message and "local" in message


# ----------------------------------------------------------------------------- get_contact_photo


async def test_photo_small_enough_is_inline_and_linked(client: Client) -> None:
    contact_id = await find_one(client, "contact", "Alexander Wilson")
    result = await call(client, "get_contact_photo", contact_id=contact_id)
    photo = result.structured_content["photo"]
    images = [block for block in result.content if block.type == "image"]
    links = [block for block in result.content if block.type == "resource_link"]
    assert len(images) == 1 and len(links) == 1
    assert links[0].uri == photo["resource_uri"]
    data, mime = await read_bytes(client, photo["resource_uri"])
    assert base64.b64decode(images[0].data) == data
    assert mime == photo["mime_type"] == images[0].mime_type
    assert len(data) == photo["size"]


async def test_contact_without_photo_has_null_photo(client: Client) -> None:
    contact_id = await find_one(client, "contact", "John Best")
    result = await call(client, "get_contact_photo", contact_id=contact_id)
    assert result.structured_content["photo"] is None
    assert [block.type for block in result.content] == ["text"]
    assert "has no photo" in text_of(result)


async def test_photo_over_inline_limit_is_only_linked(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings("[limits]\ninline_bytes = 100\n")
    async with Client(build_server(settings)) as client:
        contact_id = await find_one(client, "contact", "Alexander Wilson")
        result = await call(client, "get_contact_photo", contact_id=contact_id)
        assert [block.type for block in result.content] == ["text", "resource_link"]
        assert result.structured_content["shown_inline"] == "none"
        # A 100-byte limit leaves no room even for a 16-pixel preview; the text says so.
        assert "Not inline" in text_of(result) and "over the inline limit of 100 bytes" in text_of(result)


async def test_photo_of_missing_contact_is_not_found(client: Client) -> None:
    assert "not found" in (await error(client, "get_contact_photo", contact_id=MISSING_GUID)).lower()


# ----------------------------------------------------------------------------- upload_attachment


async def printer_case(client: Client) -> str:
    return await find_one(client, "case", "Printer on fire")


async def test_upload_text_then_list_and_read_it(client: Client) -> None:
    case_id = await printer_case(client)
    entry = await ok(client, "upload_attachment", record_id=case_id, file_name="note.txt", content_text="hot!")
    assert (entry["name"], entry["mime_type"], entry["size"]) == ("note.txt", "text/plain", 4)
    assert entry["file_id"] in [file["file_id"] for file in await all_files(client, case_id)]
    assert await read_bytes(client, entry["resource_uri"]) == (b"hot!", "text/plain")


async def test_upload_from_path_detects_the_type_from_the_bytes(client: Client, files_root: Path) -> None:
    (files_root / "shot").write_bytes(PNG_1x1)
    entry = await ok(client, "upload_attachment", record_id=await printer_case(client), file_name="shot", path="shot")
    assert entry["mime_type"] == "image/png"
    assert (await read_bytes(client, entry["resource_uri"]))[0] == PNG_1x1


async def test_upload_with_explicit_mime_type(client: Client) -> None:
    entry = await ok(
        client,
        "upload_attachment",
        record_id=await printer_case(client),
        file_name="data.bin",
        content_text="{}",
        mime_type="application/vnd.custom+json",
    )
    assert entry["mime_type"] == "application/vnd.custom+json"


@pytest.mark.parametrize("text", ["{}", "null", "[1, 2]", "true", "42", '"quoted"'])
async def test_upload_text_that_looks_like_json_is_stored_verbatim(client: Client, text: str) -> None:
    entry = await ok(
        client, "upload_attachment", record_id=await printer_case(client), file_name="t.txt", content_text=text
    )
    assert (await read_bytes(client, entry["resource_uri"]))[0] == text.encode()


async def test_upload_with_empty_file_name_is_refused(client: Client) -> None:
    message = await error(
        client, "upload_attachment", record_id=await printer_case(client), file_name=" ", content_text="x"
    )
    assert "file_name is empty" in message


async def test_upload_base64(client: Client) -> None:
    entry = await ok(
        client,
        "upload_attachment",
        record_id=await printer_case(client),
        file_name="dot.png",
        content_base64=base64.b64encode(PNG_1x1).decode(),
    )
    assert entry["size"] == len(PNG_1x1) and entry["mime_type"] == "image/png"


async def test_upload_copies_a_resource_between_records(client: Client) -> None:
    source = (await all_files(client, await printer_case(client)))[0]
    contact_id = await find_one(client, "contact", "John Best")
    entry = await ok(
        client,
        "upload_attachment",
        record_id=contact_id,
        record_type="contact",
        file_name=source["name"],
        resource_uri=source["resource_uri"],
    )
    assert entry["record_type"] == "contact" and entry["file_id"] != source["file_id"]
    assert await read_bytes(client, entry["resource_uri"]) == await read_bytes(client, source["resource_uri"])


@pytest.mark.parametrize(
    "sources",
    [{}, {"content_text": "a", "content_base64": "YQ=="}, {"path": "x", "url": "https://example.com/x"}],
)
async def test_upload_needs_exactly_one_source(client: Client, sources: dict[str, str]) -> None:
    message = await error(client, "upload_attachment", record_id=MISSING_GUID, file_name="a.txt", **sources)
    assert "exactly one source" in message


async def test_upload_outside_roots_is_refused_and_nothing_is_added(client: Client, tmp_path: Path) -> None:
    case_id = await printer_case(client)
    before = await all_files(client, case_id)
    (tmp_path / "outside.txt").write_text("x")
    message = await error(
        client, "upload_attachment", record_id=case_id, file_name="o.txt", path=str(tmp_path / "outside.txt")
    )
    assert "outside the folders" in message
    assert await all_files(client, case_id) == before


async def test_upload_over_the_limit_is_refused_and_nothing_is_added(
    make_settings: Callable[..., Settings],
) -> None:
    async with Client(build_server(make_settings("[limits]\nmax_transfer_bytes = 10\n"))) as client:
        case_id = await printer_case(client)
        before = await all_files(client, case_id)
        message = await error(client, "upload_attachment", record_id=case_id, file_name="a.txt", content_text="x" * 11)
        assert "transfer limit of 10 bytes" in message
        assert await all_files(client, case_id) == before


async def test_upload_to_missing_record_is_not_found(client: Client) -> None:
    message = await error(client, "upload_attachment", record_id=MISSING_GUID, file_name="a.txt", content_text="x")
    assert "not found" in message.lower()


async def test_upload_unknown_record_type_is_refused(client: Client) -> None:
    message = await error(
        client, "upload_attachment", record_id=MISSING_GUID, record_type="invoice", file_name="a", content_text="x"
    )
    assert "record_type" in message


# ------------------------------------------------------------------------------------ bind_photo


async def test_bind_photo_replaces_the_photo(client: Client, files_root: Path) -> None:
    contact_id = await find_one(client, "contact", "John Best")
    (files_root / "face.png").write_bytes(PNG_1x1)
    bound = await ok(client, "bind_photo", contact_id=contact_id, path="face.png")
    assert bound["photo"]["size"] == len(PNG_1x1)
    current = await ok(client, "get_contact_photo", contact_id=contact_id)
    assert current["photo"]["photo_id"] == bound["photo"]["photo_id"]
    assert await read_bytes(client, current["photo"]["resource_uri"]) == (PNG_1x1, "image/png")


async def test_bind_photo_twice_is_idempotent(client: Client) -> None:
    contact_id = await find_one(client, "contact", "John Best")
    encoded = base64.b64encode(PNG_1x1).decode()
    await ok(client, "bind_photo", contact_id=contact_id, content_base64=encoded)
    await ok(client, "bind_photo", contact_id=contact_id, content_base64=encoded)
    assert (await read_bytes(client, f"crm://local/contacts/{contact_id}/photo"))[0] == PNG_1x1


async def test_bind_photo_refuses_non_images_and_keeps_the_old_photo(client: Client) -> None:
    contact_id = await find_one(client, "contact", "Alexander Wilson")
    before = await ok(client, "get_contact_photo", contact_id=contact_id)
    assert "must be an image" in await error(client, "bind_photo", contact_id=contact_id, content_text="not a photo")
    assert await ok(client, "get_contact_photo", contact_id=contact_id) == before


# ---------------------------------------------------------------------------------- find_records


async def test_find_contact_by_name_case_insensitively(client: Client) -> None:
    result = await call(client, "find_records", record_type="contact", query="alexander wilson")
    (record,) = result.structured_content["records"]
    assert record["title"] == "Alexander Wilson"
    assert record["id"] in text_of(result)


async def test_find_case_by_number(client: Client) -> None:
    case_id = await printer_case(client)
    records = (await ok(client, "find_records", record_type="case", query="printer"))["records"]
    number = records[0]["title"].split()[0]
    assert await find_one(client, "case", number) == case_id


async def test_find_without_match_says_so(client: Client) -> None:
    result = await call(client, "find_records", record_type="contact", query="Nobody Atall")
    assert result.structured_content["records"] == []
    assert "No contact" in text_of(result)


async def test_find_blank_query_is_refused(client: Client) -> None:
    assert "query" in await error(client, "find_records", record_type="contact", query="   ")


# ------------------------------------------------------------------------------------- read_file


async def test_read_file_returns_text_for_text_files(client: Client) -> None:
    entry = await ok(
        client, "upload_attachment", record_id=await printer_case(client), file_name="r.csv", content_text="a,b\n1,2\n"
    )
    result = await call(client, "read_file", resource_uri=entry["resource_uri"])
    assert result.structured_content["returned_as"] == "text"
    assert result.content[-1].text == "a,b\n1,2\n"
    # Also in the structured result: pydantic-ai shows the model only that when all blocks are text.
    assert result.structured_content["text"] == "a,b\n1,2\n"


async def test_read_file_of_the_largest_inline_text_stays_under_claude_desktops_1_mb(client: Client) -> None:
    text = ("All work and no play makes Jack a dull boy.\n" * 6000)[: 256 * 1024]
    entry = await ok(
        client, "upload_attachment", record_id=await printer_case(client), file_name="j.txt", content_text=text
    )
    result = await call(client, "read_file", resource_uri=entry["resource_uri"])
    assert result.structured_content["text"] == text
    assert len(result.model_dump_json(by_alias=True, exclude_none=True)) < 1_048_576


async def test_read_file_embeds_small_binaries(client: Client) -> None:
    entry = await ok(
        client,
        "upload_attachment",
        record_id=await printer_case(client),
        file_name="d.png",
        content_base64=base64.b64encode(PNG_1x1).decode(),
    )
    result = await call(client, "read_file", resource_uri=entry["resource_uri"])
    (embedded,) = [block for block in result.content if block.type == "resource"]
    assert base64.b64decode(embedded.resource.blob) == PNG_1x1
    assert result.structured_content["text"] is None
    assert embedded.resource.mime_type == "image/png"


async def test_read_file_too_large_names_save_file(make_settings: Callable[..., Settings]) -> None:
    async with Client(build_server(make_settings("[limits]\ninline_bytes = 10\ninline_text_bytes = 10\n"))) as client:
        case_id = await printer_case(client)
        big = max(await all_files(client, case_id), key=lambda file: file["size"])
        assert "save_file" in await error(client, "read_file", resource_uri=big["resource_uri"])


async def test_read_file_refuses_foreign_uris(client: Client) -> None:
    assert "not a file URI of this server" in await error(client, "read_file", resource_uri="file:///etc/passwd")


# ------------------------------------------------------------------------------------- save_file


async def test_save_file_streams_to_disk(client: Client, files_root: Path) -> None:
    source = (await all_files(client, await printer_case(client)))[0]
    saved = await ok(client, "save_file", resource_uri=source["resource_uri"], path="copy.bin")
    data, _ = await read_bytes(client, source["resource_uri"])
    assert (files_root / "copy.bin").read_bytes() == data
    assert saved["sha256"] == hashlib.sha256(data).hexdigest() and saved["size"] == len(data)
    assert [path.name for path in files_root.iterdir()] == ["copy.bin"]


async def test_save_file_into_a_folder_uses_the_file_name(client: Client, files_root: Path) -> None:
    source = (await all_files(client, await printer_case(client)))[0]
    saved = await ok(client, "save_file", resource_uri=source["resource_uri"], path=str(files_root))
    assert saved["path"] == str(files_root / source["name"])


async def test_save_file_does_not_overwrite_unless_asked(client: Client, files_root: Path) -> None:
    (files_root / "keep.txt").write_text("mine")
    source = (await all_files(client, await printer_case(client)))[0]
    assert "overwrite" in await error(client, "save_file", resource_uri=source["resource_uri"], path="keep.txt")
    assert (files_root / "keep.txt").read_text() == "mine"
    await ok(client, "save_file", resource_uri=source["resource_uri"], path="keep.txt", overwrite=True)
    assert (files_root / "keep.txt").read_bytes() == (await read_bytes(client, source["resource_uri"]))[0]


async def test_save_file_outside_roots_is_refused(client: Client, tmp_path: Path) -> None:
    source = (await all_files(client, await printer_case(client)))[0]
    message = await error(client, "save_file", resource_uri=source["resource_uri"], path=str(tmp_path / "x"))
    assert "outside" in message
    assert not (tmp_path / "x").exists()


async def test_save_file_of_missing_file_leaves_nothing(client: Client, files_root: Path) -> None:
    message = await error(client, "save_file", resource_uri=f"crm://local/files/{MISSING_GUID}", path="x.bin")
    assert "not found" in message.lower()
    assert list(files_root.iterdir()) == []


# --------------------------------------------------------------------------------- list_backends


async def test_list_backends(client: Client) -> None:
    result = await ok(client, "list_backends")
    assert result["default_backend"] == "local"
    (backend,) = result["backends"]
    assert backend["vendor"] == "local" and backend["default"] is True
    assert set(backend["capabilities"]["upload_record_types"]) == {"case", "contact", "account"}


# -------------------------------------------------------------------------------------- progress


async def test_long_upload_reports_progress_up_to_the_total(client: Client, files_root: Path) -> None:
    payload = b"\x00" * (3 * 1024 * 1024)
    (files_root / "big.bin").write_bytes(payload)
    updates: list[tuple[float, float | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        updates.append((done, total))

    result = await client.call_tool(
        "upload_attachment",
        {"record_id": await printer_case(client), "file_name": "big.bin", "path": "big.bin"},
        progress_callback=on_progress,
    )
    assert not result.is_error
    assert updates[-1] == (len(payload), len(payload))
    assert [done for done, _ in updates] == sorted(done for done, _ in updates)


async def test_save_file_reports_progress(client: Client, files_root: Path) -> None:
    (files_root / "big.bin").write_bytes(b"\x01" * (2 * 1024 * 1024))
    entry = await ok(client, "upload_attachment", record_id=await printer_case(client), file_name="b", path="big.bin")
    updates: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        updates.append(done)

    await client.call_tool(
        "save_file", {"resource_uri": entry["resource_uri"], "path": "copy.bin"}, progress_callback=on_progress
    )
    assert updates[-1] == 2 * 1024 * 1024


async def test_upload_to_an_account(client: Client) -> None:
    account_id = demo.ACCOUNT_NORTHWIND
    entry = await ok(
        client, "upload_attachment", record_id=account_id, record_type="account", file_name="a.txt", content_text="hi"
    )
    assert entry["record_type"] == "account"
    assert await read_bytes(client, entry["resource_uri"]) == (b"hi", "text/plain")


def test_readme_names_the_demo_ids() -> None:
    """The README promises these ids to newcomers; they must stay what the store seeds."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for record_id in (
        demo.CASE_PRINTER_ON_FIRE,
        demo.CASE_INVOICE_VAT,
        demo.CONTACT_ALEXANDER_WILSON,
        demo.CONTACT_JOHN_BEST,
        demo.CONTACT_MARIA_GARCIA,
        demo.ACCOUNT_NORTHWIND,
    ):
        assert f"`{record_id}`" in readme


async def test_copy_to_a_missing_record_on_another_backend_names_it(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    toml = (
        'default_backend = "a"\n'
        f'[backends.a]\nvendor = "local"\npath = "{tmp_path / "a"}"\n'
        f'[backends.b]\nvendor = "local"\npath = "{tmp_path / "b"}"\ndemo_data = false\n'
    )
    async with Client(build_server(make_settings(toml))) as client:
        source = (await all_files(client, await printer_case(client)))[0]
        target_case = demo.CASE_PRINTER_ON_FIRE
        message = await error(
            client,
            "upload_attachment",
            backend="b",
            record_id=target_case,
            file_name=source["name"],
            resource_uri=source["resource_uri"],
        )
        assert "not found on backend 'b'" in message  # b is empty: the copy needs a record there


async def test_copy_into_another_backend_round_trips(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    toml = (
        'default_backend = "a"\n'
        f'[backends.a]\nvendor = "local"\npath = "{tmp_path / "a"}"\n'
        f'[backends.b]\nvendor = "local"\npath = "{tmp_path / "b"}"\n'
    )
    async with Client(build_server(make_settings(toml))) as client:
        source = (await all_files(client, await printer_case(client)))[0]
        copied = await ok(
            client,
            "upload_attachment",
            backend="b",
            record_id=demo.CASE_INVOICE_VAT,
            file_name=source["name"],
            resource_uri=source["resource_uri"],
        )
        assert copied["resource_uri"].startswith("crm://b/files/")
        assert await read_bytes(client, copied["resource_uri"]) == await read_bytes(client, source["resource_uri"])
        listed = (await ok(client, "list_case_files", backend="b", case_id=demo.CASE_INVOICE_VAT))["files"]
        assert copied["file_id"] in [file["file_id"] for file in listed]


async def test_misspelt_argument_is_refused_with_the_known_ones(client: Client) -> None:
    message = await error(client, "list_case_files", case_id=MISSING_GUID, limt=5)
    assert "unknown argument(s) limt" in message
    assert "limit" in message


# ---------------------------------------------------------------------- every bad input, every tool

PNG_B64 = base64.b64encode(PNG_1x1).decode()
CASE = demo.CASE_PRINTER_ON_FIRE
JOHN = demo.CONTACT_JOHN_BEST
A_FILE = f"crm://local/files/{MISSING_GUID}"
ALEX_PHOTO = f"crm://local/contacts/{demo.CONTACT_ALEXANDER_WILSON}/photo"

BAD_INPUTS: list[tuple[str, dict[str, object], str]] = [
    # list_case_files
    ("list_case_files", {"case_id": ""}, "is not a valid id"),
    ("list_case_files", {"case_id": CASE, "cursor": "eyJub3QiOiJvdXJzIn0"}, "cursor is not one this backend issued"),
    # get_contact_photo
    ("get_contact_photo", {"contact_id": "John Best"}, "is not a valid id"),
    ("get_contact_photo", {}, "contact_id: required argument is missing"),
    # upload_attachment
    ("upload_attachment", {"record_id": "CS-1001", "file_name": "a.txt", "content_text": "x"}, "is not a valid id"),
    ("upload_attachment", {"record_id": CASE, "content_text": "x"}, "file_name: required argument is missing"),
    ("upload_attachment", {"record_id": CASE, "file_name": "../a.txt", "content_text": "x"}, "plain file name"),
    ("upload_attachment", {"record_id": CASE, "file_name": "a", "content_text": "x", "mime_type": "pdf"}, "not a MIME"),
    ("upload_attachment", {"record_id": CASE, "file_name": "a.bin", "content_base64": "***"}, "not valid base64"),
    ("upload_attachment", {"record_id": CASE, "file_name": "a.txt", "path": "no-such.txt"}, "no file at"),
    ("upload_attachment", {"record_id": CASE, "file_name": "a", "url": "ftp://example.com/a"}, "only http and https"),
    ("upload_attachment", {"record_id": CASE, "file_name": "a", "url": "http://127.0.0.1:9/a"}, "loopback"),
    ("upload_attachment", {"record_id": CASE, "file_name": "a", "url": "not a url"}, "url"),
    ("upload_attachment", {"record_id": CASE, "file_name": "a", "resource_uri": "https://x/y"}, "not a file URI"),
    ("upload_attachment", {"record_id": CASE, "file_name": "a", "resource_uri": A_FILE}, "not found"),
    # bind_photo
    ("bind_photo", {"contact_id": JOHN}, "exactly one source"),
    ("bind_photo", {"contact_id": JOHN, "path": "a.png", "content_base64": PNG_B64}, "exactly one source"),
    ("bind_photo", {"contact_id": "john", "content_base64": PNG_B64}, "is not a valid id"),
    ("bind_photo", {"contact_id": MISSING_GUID, "content_base64": PNG_B64}, "not found"),
    ("bind_photo", {"contact_id": JOHN, "content_base64": PNG_B64, "mime_type": "image"}, "not a MIME"),
    # find_records
    ("find_records", {"record_type": "account", "query": "Northwind"}, "record_type:"),
    ("find_records", {"record_type": "contact", "query": ""}, "query:"),
    ("find_records", {"record_type": "contact", "query": "x" * 201}, "query:"),
    ("find_records", {"record_type": "contact", "query": "a", "limit": 0}, "limit:"),
    ("find_records", {"record_type": "contact", "query": "a", "limit": 101}, "limit:"),
    # read_file
    ("read_file", {"resource_uri": A_FILE}, "not found"),
    ("read_file", {"resource_uri": "crm://local/files/../../etc/passwd"}, "not a file URI"),
    ("read_file", {}, "resource_uri: required argument is missing"),
    # save_file
    ("save_file", {"resource_uri": "crm://backends", "path": "x.json"}, "not a file URI"),
    ("save_file", {"resource_uri": ALEX_PHOTO, "path": "no/such/folder/x.png"}, "does not exist"),
    ("save_file", {"resource_uri": ALEX_PHOTO, "path": "/etc/x.png"}, "outside the folders"),
    ("save_file", {"resource_uri": A_FILE}, "path: required argument is missing"),
    # list_backends
    ("list_backends", {"verbose": True}, "unknown argument(s) verbose"),
]


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"), BAD_INPUTS, ids=[f"{t}-{i}" for i, (t, *_) in enumerate(BAD_INPUTS)]
)
async def test_bad_input_is_a_tool_error_that_says_what_is_wrong(
    client: Client, tool: str, arguments: dict[str, object], expected: str
) -> None:
    message = await error(client, tool, **arguments)
    assert expected in message
    assert "Traceback" not in message


async def test_an_unexpected_failure_is_a_tool_error_that_leaks_nothing(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crm_mcp.backends.local import LocalBackend

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("internal detail password=hunter2")

    monkeypatch.setattr(LocalBackend, "find_records", broken)
    message = await error(client, "find_records", record_type="case", query="printer")
    assert "find_records failed with an unexpected error (RuntimeError)" in message
    assert "server log" in message
    assert "hunter2" not in message


# ------------------------------------------------- every result: schema-valid, text complete on its own

# Fields a text-only client needs (DESIGN §3: names, ids, sizes, MIME types and resource URIs).
_SHOWN_KEYS = {
    "backend", "case_id", "contact_id", "record_id", "record_type", "file_id", "photo_id", "id", "name", "title",
    "mime_type", "size", "resource_uri", "next_cursor", "path", "sha256", "vendor", "default_backend",
}  # fmt: skip


def _shown_values(value: object, key: str = "") -> list[str]:
    if isinstance(value, dict):
        return [text for child_key, child in value.items() for text in _shown_values(child, child_key)]
    if isinstance(value, list):
        return [text for child in value for text in _shown_values(child, key)]
    if key not in _SHOWN_KEYS or value is None:
        return []
    return [f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)]


async def test_every_tool_result_matches_its_schema_and_its_text_is_complete(client: Client, files_root: Path) -> None:
    import jsonschema

    schemas = {tool.name: tool.output_schema for tool in (await client.list_tools()).tools}
    uploaded = await ok(client, "upload_attachment", record_id=CASE, file_name="n.txt", content_text="note")
    png = await ok(client, "upload_attachment", record_id=CASE, file_name="p.png", content_base64=PNG_B64)
    calls: list[tuple[str, dict[str, object]]] = [
        ("list_case_files", {"case_id": CASE, "limit": 2}),
        ("get_contact_photo", {"contact_id": demo.CONTACT_ALEXANDER_WILSON}),
        ("get_contact_photo", {"contact_id": demo.CONTACT_MARIA_GARCIA}),  # a preview (Pillow) of a large photo
        ("get_contact_photo", {"contact_id": JOHN}),
        ("upload_attachment", {"record_id": JOHN, "record_type": "contact", "file_name": "x.txt", "content_text": "x"}),
        ("bind_photo", {"contact_id": demo.CONTACT_MARIA_GARCIA, "content_base64": PNG_B64}),
        ("find_records", {"record_type": "contact", "query": "a"}),
        ("find_records", {"record_type": "case", "query": "CS-1001"}),
        ("read_file", {"resource_uri": uploaded["resource_uri"]}),
        ("read_file", {"resource_uri": png["resource_uri"]}),
        ("save_file", {"resource_uri": png["resource_uri"], "path": "saved.png"}),
        ("list_backends", {}),
    ]
    for tool, arguments in calls:
        result = await call(client, tool, **arguments)
        assert not result.is_error, text_of(result)
        jsonschema.validate(result.structured_content, schemas[tool])
        text = text_of(result)
        missing = [value for value in _shown_values(result.structured_content) if value not in text]
        assert missing == [], f"{tool}: the text block lacks {missing}:\n{text}"


async def test_resource_links_carry_each_files_type_and_size(client: Client) -> None:
    result = await call(client, "list_case_files", case_id=CASE)
    links = {block.uri: block for block in result.content if block.type == "resource_link"}
    for file in result.structured_content["files"]:
        link = links[file["resource_uri"]]
        assert (link.name, link.mime_type, link.size) == (file["name"], file["mime_type"], file["size"])


async def test_tool_descriptions_have_no_docstring_indentation(client: Client) -> None:
    for tool in (await client.list_tools()).tools:
        assert tool.description
        assert "\n    " not in tool.description, tool.name


async def test_saved_files_are_private_to_their_owner(client: Client, files_root: Path) -> None:
    """README, Decisions: CRM attachments are often confidential."""
    await ok(
        client, "save_file", resource_uri=f"crm://local/contacts/{demo.CONTACT_ALEXANDER_WILSON}/photo", path="a.png"
    )
    assert (files_root / "a.png").stat().st_mode & 0o777 == 0o600


# ------------------------------------------- payload policy: transfer limit, verification, sha256


def _unannounced_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the local store serve files without a size (as a CRM answering with chunked encoding
    does); the returned list counts the bytes the streams handed out."""
    opener = LocalBackend.open_file
    handed_out = [0]

    @asynccontextmanager
    async def open_file(self: LocalBackend, file_id: str) -> AsyncIterator[Download]:
        async with opener(self, file_id) as download:
            original = download.chunks

            async def chunks() -> AsyncIterator[bytes]:
                async for chunk in original:
                    for start in range(0, len(chunk), 1000):  # small pieces: where it stops shows
                        handed_out[0] += len(chunk[start : start + 1000])
                        yield chunk[start : start + 1000]

            download.size = None
            download.chunks = chunks()
            yield download

    monkeypatch.setattr(LocalBackend, "open_file", open_file)
    return handed_out


async def _uploaded(client: Client, size: int, name: str = "big.bin") -> dict[str, object]:
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    encoded = base64.b64encode(data).decode()
    return await ok(client, "upload_attachment", record_id=CASE, file_name=name, content_base64=encoded)


async def _stored_then_limited(make_settings: Callable[..., Settings], size: int, limit: int) -> tuple[str, Settings]:
    """A file of `size` bytes stored by a server with the default limits, and the settings of the same
    store with `max_transfer_bytes = limit` (an administrator lowered it, or the CRM has bigger files)."""
    async with Client(build_server(make_settings())) as client:
        uri = str((await _uploaded(client, size))["resource_uri"])
    return uri, make_settings(f"[limits]\nmax_transfer_bytes = {limit}\n")


async def test_read_file_over_the_transfer_limit_names_save_file(make_settings: Callable[..., Settings]) -> None:
    uri, limited = await _stored_then_limited(make_settings, 50_000, 5000)
    async with Client(build_server(limited)) as client:
        message = await error(client, "read_file", resource_uri=uri)
        assert "save_file" in message and "limits.max_transfer_bytes" in message
        assert "50,000 bytes" in message and "5,000 bytes" in message
        small = (await _uploaded(client, 4096, "ok.bin"))["resource_uri"]
        assert (await ok(client, "read_file", resource_uri=small))["size"] == 4096


async def test_read_file_of_a_stream_without_a_size_stops_at_the_limit(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, limited = await _stored_then_limited(make_settings, 50_000, 5000)
    async with Client(build_server(limited)) as client:
        handed_out = _unannounced_sizes(monkeypatch)
        message = await error(client, "read_file", resource_uri=uri)
        assert "save_file" in message and "no announced size" in message
        assert handed_out == [6000]  # read up to the first piece past 5,000 bytes, and no further


async def test_resources_over_the_transfer_limit_name_save_file(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, limited = await _stored_then_limited(make_settings, 50_000, 5000)
    async with Client(build_server(limited)) as client:
        with pytest.raises(MCPError) as known:
            await client.read_resource(uri)
        assert "50,000 bytes" in known.value.error.message and "save_file" in known.value.error.message
        handed_out = _unannounced_sizes(monkeypatch)
        with pytest.raises(MCPError) as unknown:
            await client.read_resource(uri)
        assert "no announced size" in unknown.value.error.message and "save_file" in unknown.value.error.message
        assert handed_out == [6000]


async def test_a_download_shorter_than_announced_is_an_error_not_a_file(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = (await _uploaded(client, 8192))["resource_uri"]
    opener = LocalBackend.open_file

    @asynccontextmanager
    async def short(self: LocalBackend, file_id: str) -> AsyncIterator[Download]:
        async with opener(self, file_id) as download:
            download.size = (download.size or 0) + 10  # the CRM announces more than it sends
            yield download

    monkeypatch.setattr(LocalBackend, "open_file", short)
    assert "incomplete" in await error(client, "read_file", resource_uri=uri)
    with pytest.raises(MCPError, match="incomplete"):
        await client.read_resource(uri)


async def test_upload_reports_the_sha256_of_the_bytes_sent(client: Client, files_root: Path) -> None:
    data = bytes(range(256)) * 4000
    (files_root / "data.bin").write_bytes(data)
    result = await call(client, "upload_attachment", record_id=CASE, file_name="data.bin", path="data.bin")
    uploaded = result.structured_content
    assert uploaded["sha256"] == hashlib.sha256(data).hexdigest()
    assert f"sha256={uploaded['sha256']}" in text_of(result) and f"{len(data):,} bytes sent" in text_of(result)
    stored, _ = await read_bytes(client, uploaded["resource_uri"])
    assert hashlib.sha256(stored).hexdigest() == uploaded["sha256"]
    text = await ok(client, "upload_attachment", record_id=CASE, file_name="n.txt", content_text="héllo")
    assert text["sha256"] == hashlib.sha256("héllo".encode()).hexdigest()


async def test_bind_photo_reports_the_sha256_of_the_image_sent(client: Client) -> None:
    result = await call(client, "bind_photo", contact_id=JOHN, content_base64=PNG_B64)
    assert result.structured_content["sha256"] == hashlib.sha256(PNG_1x1).hexdigest()
    assert f"sha256={hashlib.sha256(PNG_1x1).hexdigest()}" in text_of(result)


async def test_read_file_reports_the_sha256_of_what_it_returns(client: Client) -> None:
    for file in await all_files(client, CASE):
        data, _ = await read_bytes(client, file["resource_uri"])
        result = await call(client, "read_file", resource_uri=file["resource_uri"])
        assert result.structured_content["sha256"] == hashlib.sha256(data).hexdigest()
        assert result.structured_content["sha256"] in text_of(result)


async def test_an_upload_the_crm_did_not_take_whole_is_reported_not_passed_off(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend that stops reading early (a bug, or a CRM that cut the body) must not produce a
    result claiming the file was stored."""
    store = LocalBackend.upload_attachment

    async def first_chunk_only(
        self: LocalBackend, record_type: RecordType, record_id: str, upload: Upload
    ) -> FileEntry:
        first = await anext(upload.chunks)

        async def one() -> AsyncIterator[bytes]:
            yield first

        entry = await store(self, record_type, record_id, replace(upload, size=len(first), chunks=one()))
        return entry.model_copy(update={"size": upload.size})

    monkeypatch.setattr(LocalBackend, "upload_attachment", first_chunk_only)
    message = await error(client, "upload_attachment", record_id=CASE, file_name="h.txt", content_text="x" * 600_000)
    assert "verification failed" in message and "262,144 of the 600,000 bytes" in message
