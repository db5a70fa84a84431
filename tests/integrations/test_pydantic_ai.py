"""examples/pydantic_ai_agent.py as a real process: a pydantic-ai agent (scripted FunctionModel, no LLM)
drives `crm-mcp serve` over stdio through `MCPToolset`; what the agent received is checked against
the server's own answers on the same store."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ok, text_of
from tests.integrations.support import require_modules, run_example, store

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    require_modules("pydantic_ai", "fastmcp")
    home = tmp_path_factory.mktemp("pydantic-ai-home")
    return home, run_example(sys.executable, "pydantic_ai_agent.py", home)


def results(output: dict[str, Any]) -> dict[str, Any]:
    return {entry["tool"]: entry["content"] for entry in output["tool_results"]}


def test_the_agent_called_find_list_read_in_order(run: tuple[Path, dict[str, Any]]) -> None:
    _, output = run
    assert [entry["tool"] for entry in output["tool_results"]] == ["find_records", "list_case_files", "read_file"]
    text = output["tool_results"][2]["content"]["text"]
    action = next(line for line in text.splitlines() if line.startswith("Action:"))
    assert output["output"] == f"technician-notes.txt says: {action}"


async def test_find_records_result_is_the_structured_content(run: tuple[Path, dict[str, Any]]) -> None:
    home, output = run
    async with store(home) as client:
        expected = await ok(client, "find_records", record_type="case", query="Printer on fire")
    assert results(output)["find_records"] == expected


async def test_list_case_files_arrives_as_text_and_resource_links(run: tuple[Path, dict[str, Any]]) -> None:
    home, output = run
    case_id = results(output)["find_records"]["records"][0]["id"]
    async with store(home) as client:
        listed = await client.call_tool("list_case_files", {"case_id": case_id})
    assert not listed.is_error
    text, *uris = results(output)["list_case_files"]
    assert text == text_of(listed)
    assert uris == [file["resource_uri"] for file in listed.structured_content["files"]]
    assert len(uris) == 5


async def test_read_file_result_describes_the_notes_file(run: tuple[Path, dict[str, Any]]) -> None:
    home, output = run
    received = results(output)["read_file"]
    async with store(home) as client:
        expected = await ok(client, "read_file", resource_uri=received["resource_uri"])
        contents = (await client.read_resource(received["resource_uri"])).contents
    assert received == expected
    assert (received["name"], received["returned_as"]) == ("technician-notes.txt", "text")
    assert received["size"] == len(base64.b64decode(contents[0].blob))


async def test_the_agent_received_the_text_of_the_file(run: tuple[Path, dict[str, Any]]) -> None:
    """pydantic-ai hands the model only structuredContent when every content block is text, so
    read_file's structured result must carry the text itself."""
    home, output = run
    received = results(output)["read_file"]
    async with store(home) as client:
        contents = (await client.read_resource(received["resource_uri"])).contents
    notes = base64.b64decode(contents[0].blob).decode()
    assert "Thermal cut-off failed" in notes
    assert received["text"] == notes
