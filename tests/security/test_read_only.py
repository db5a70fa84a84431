"""Read-only: `serve --read-only` drops the write tools; `read_only = true` makes one backend refuse writes."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from mcp import Client

from crm_mcp.config import Settings
from crm_mcp.errors import ConfigError
from crm_mcp.server import build_server
from tests.contract.harnesses import HARNESSES
from tests.helpers import PNG_1x1, error, find_one, ok
from tests.test_cli import env_for

pytestmark = pytest.mark.anyio

WRITE_TOOLS = {"upload_attachment", "bind_photo"}
PNG_B64 = base64.b64encode(PNG_1x1).decode()
TWO_LOCAL = """
default_backend = "open"
[backends.open]
vendor = "local"
path = "open"
[backends.locked]
vendor = "local"
path = "locked"
read_only = true
"""


async def _files_of(client: Client, backend: str, case_id: str) -> list[str]:
    page = await ok(client, "list_case_files", case_id=case_id, limit=200, backend=backend)
    return [file["name"] for file in page["files"]]


async def test_a_read_only_backend_refuses_each_write_tool_and_stays_unchanged(
    make_settings: Callable[..., Settings],
) -> None:
    async with Client(build_server(make_settings(TWO_LOCAL))) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert tools >= WRITE_TOOLS  # per-backend read-only keeps the tools for the other backends
        case_id = await find_one(client, "case", "Printer on fire")
        before = await _files_of(client, "locked", case_id)
        message = await error(
            client, "upload_attachment", record_id=case_id, file_name="x.txt", content_text="x", backend="locked"
        )
        assert "backend 'locked' is read-only" in message and "upload_attachment" in message
        contact = (await ok(client, "find_records", record_type="contact", query="Alexander Wilson", backend="locked"))[
            "records"
        ][0]["id"]
        photo_before = await ok(client, "get_contact_photo", contact_id=contact, backend="locked")
        message = await error(
            client,
            "bind_photo",
            contact_id=contact,
            content_base64=PNG_B64,
            backend="locked",
        )
        assert "backend 'locked' is read-only" in message and "bind_photo" in message
        assert await _files_of(client, "locked", case_id) == before
        assert await ok(client, "get_contact_photo", contact_id=contact, backend="locked") == photo_before
        # The writable backend next to it still takes writes.
        await ok(client, "upload_attachment", record_id=case_id, file_name="x.txt", content_text="x", backend="open")
        assert "x.txt" in await _files_of(client, "open", case_id)


async def test_list_backends_shows_which_backend_is_read_only(make_settings: Callable[..., Settings]) -> None:
    async with Client(build_server(make_settings(TWO_LOCAL))) as client:
        result = await client.call_tool("list_backends", {})
        shown = {item["name"]: item["capabilities"]["read_only"] for item in result.structured_content["backends"]}
        assert shown == {"open": False, "locked": True}
        lines = {line.split(" ")[1]: line for line in result.content[0].text.splitlines() if line.startswith("- ")}
        assert "read-only" in lines["locked"]
        assert "read-only" not in lines["open"]


async def test_the_backends_resource_shows_which_backend_is_read_only(make_settings: Callable[..., Settings]) -> None:
    async with Client(build_server(make_settings(TWO_LOCAL))) as client:
        (content,) = (await client.read_resource("crm://backends")).contents
        shown = {item["name"]: item["capabilities"]["read_only"] for item in json.loads(content.text)["backends"]}
    assert shown == {"open": False, "locked": True}


@pytest.mark.parametrize("key", sorted(HARNESSES))
async def test_every_vendor_accepts_read_only_and_refuses_writes(
    key: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    harness = HARNESSES[key]
    async with harness.start(tmp_path) as started:
        settings = make_settings(started.toml + "read_only = true\n")
        assert settings.backends[harness.backend].read_only
        async with Client(build_server(settings, transport=started.transport)) as client:
            listed = await ok(client, "list_backends")
            assert [item["capabilities"]["read_only"] for item in listed["backends"]] == [True]
            case_id = await find_one(client, "case", "Printer on fire")
            message = await error(client, "upload_attachment", record_id=case_id, file_name="x.txt", content_text="x")
            assert f"backend '{harness.backend}' is read-only" in message
            message = await error(client, "bind_photo", contact_id=harness.missing_id, content_base64=PNG_B64)
            assert f"backend '{harness.backend}' is read-only" in message


def test_read_only_must_be_a_boolean(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match=r"\[backends.x\] read_only: "):
        make_settings('[backends.x]\nvendor = "local"\nread_only = "sometimes"\n')


async def test_serve_read_only_leaves_the_write_tools_out(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings().model_copy(update={"read_only": True})
    async with Client(build_server(settings)) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert tools == {
            "list_case_files",
            "get_contact_photo",
            "find_records",
            "read_file",
            "save_file",
            "list_backends",
        }
        result = await client.call_tool(
            "upload_attachment", {"record_id": "x", "file_name": "a.txt", "content_text": "a"}
        )
        assert result.is_error
        assert "upload_attachment" in result.content[0].text
        listed = await ok(client, "list_backends")
        assert listed["backends"][0]["capabilities"]["read_only"] is True


def test_serve_read_only_flag_over_stdio(tmp_path: Path) -> None:
    """The real command line: `crm-mcp serve --read-only` lists six tools."""
    requests = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    done = subprocess.run(
        [sys.executable, "-m", "crm_mcp", "serve", "--read-only"],
        input="".join(json.dumps(item) + "\n" for item in requests),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env_for(tmp_path),
        check=False,
    )
    answers = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    listing = next(answer for answer in answers if answer.get("id") == 2)
    names = {tool["name"] for tool in listing["result"]["tools"]}
    assert "find_records" in names and "save_file" in names
    assert not names & WRITE_TOOLS, done.stderr
