"""Small assertions shared by the test modules."""

from __future__ import annotations

import base64
from typing import Any

from mcp import Client


def text_of(result: Any) -> str:
    """All text blocks of a tool result, joined."""
    return "\n".join(block.text for block in result.content if block.type == "text")


PNG_1x1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
MISSING_GUID = "00000000-0000-4000-8000-000000000000"


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    return await client.call_tool(tool, arguments)


async def ok(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await call(client, tool, **arguments)
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return result.structured_content


async def error(client: Client, tool: str, **arguments: Any) -> str:
    result = await call(client, tool, **arguments)
    assert result.is_error, result
    return text_of(result)


async def find_one(client: Client, record_type: str, query: str) -> str:
    records = (await ok(client, "find_records", record_type=record_type, query=query))["records"]
    assert len(records) == 1, records
    return records[0]["id"]


async def read_bytes(client: Client, uri: str) -> tuple[bytes, str]:
    result = await client.read_resource(uri)
    (content,) = result.contents
    return base64.b64decode(content.blob), content.mime_type


async def all_files(client: Client, case_id: str) -> list[dict[str, Any]]:
    return (await ok(client, "list_case_files", case_id=case_id, limit=200))["files"]
