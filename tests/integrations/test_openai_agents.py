"""examples/openai_agents.py as a real process: the OpenAI Agents SDK's `MCPServerStdio` lists
crm-mcp's tools and calls them over stdio (no model, no network); the results are checked against
the server's own answers on the same store, and the tools as an `Agent` hands them to a model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ok
from tests.integrations.support import require_modules, run_example, store

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    require_modules("agents")
    home = tmp_path_factory.mktemp("openai-agents-home")
    return home, run_example(sys.executable, "openai_agents.py", home)


async def test_lists_every_tool_the_server_has(run: tuple[Path, dict[str, Any]]) -> None:
    home, output = run
    async with store(home) as client:
        expected = [tool.name for tool in (await client.list_tools()).tools]
    assert output["tools"] == expected
    assert "upload_attachment" in output["tools"]


async def test_calls_return_the_servers_structured_content(run: tuple[Path, dict[str, Any]]) -> None:
    home, output = run
    async with store(home) as client:
        found = await ok(client, "find_records", record_type="case", query="Printer on fire")
        listed = await ok(client, "list_case_files", case_id=found["records"][0]["id"], limit=2)
    assert output["find_records"] == found
    received = output["list_case_files"]
    assert received["is_error"] is False
    assert received["structured"] == listed
    assert received["structured"]["next_cursor"]  # 5 files, 2 per page
    assert received["content_types"] == ["text", "resource_link", "resource_link"]


def test_the_agent_gets_every_tool_with_a_strict_schema(run: tuple[Path, dict[str, Any]]) -> None:
    _, output = run
    agent_tools = output["agent_tools"]
    assert sorted(agent_tools) == sorted(output["tools"])
    with_arguments = {name: tool for name, tool in agent_tools.items() if tool["parameters"]["properties"]}
    assert {name for name, tool in with_arguments.items() if not tool["strict"]} == set()
    upload = with_arguments["upload_attachment"]["parameters"]
    assert upload["additionalProperties"] is False
    assert {"record_id", "file_name", "path", "url", "content_text"} <= set(upload["required"])
