"""examples/langchain_tools.py as a real process in LangChain's own virtual environment (mcp<2),
talking to this checkout's `crm-mcp serve` (mcp 2.x) over stdio in a handshake-era protocol version.

langchain-mcp-adapters starts a new server process for `get_tools()` and for every tool call, so
the upload made by one process must be listed by the next: the local store persists on disk.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ok
from tests.integrations import langchain_env
from tests.integrations.support import counting_server, missing, run_example, store

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list[str]]:
    try:
        python = langchain_env.build()
    except langchain_env.BuildError as exc:
        missing(f"cannot build LangChain's virtual environment: {exc}")
    home = tmp_path_factory.mktemp("langchain-home")
    server_dir, starts = counting_server(tmp_path_factory.mktemp("langchain-bin"))
    output = run_example(python, "langchain_tools.py", home, server_dir=server_dir)
    return home, output, starts.read_text().split()


async def test_loads_every_tool_the_server_has(run: tuple[Path, dict[str, Any], list[str]]) -> None:
    home, output, _ = run
    async with store(home) as client:
        expected = sorted(tool.name for tool in (await client.list_tools()).tools)
    assert output["tools"] == expected


async def test_generated_schemas_are_the_servers_input_schemas(run: tuple[Path, dict[str, Any], list[str]]) -> None:
    home, output, _ = run
    async with store(home) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    for name in ("list_case_files", "upload_attachment"):
        schema = output["model_schemas"][name]
        assert schema["name"] == name
        assert schema["description"] == tools[name].description
        assert set(schema["parameters"]["properties"]) == set(tools[name].input_schema["properties"])
        assert schema["parameters"]["required"] == tools[name].input_schema["required"]
    assert output["model_schemas"]["upload_attachment"]["parameters"]["required"] == ["record_id", "file_name"]


async def test_upload_is_listed_by_the_next_process_and_stored(run: tuple[Path, dict[str, Any], list[str]]) -> None:
    home, output, starts = run
    uploaded = output["upload_attachment"]
    assert uploaded["status"] == "success"
    assert (uploaded["structured"]["name"], uploaded["structured"]["size"]) == ("langchain-note.txt", 14)

    listed = output["list_case_files"]
    assert listed["status"] == "success"
    assert uploaded["structured"]["resource_uri"] in [file["resource_uri"] for file in listed["structured"]["files"]]

    # get_tools() and each of the three calls ran in a server process of its own.
    assert len(starts) == 4
    assert len(set(starts)) == 4

    async with store(home) as client:
        contents = (await client.read_resource(uploaded["structured"]["resource_uri"])).contents
        case_id = output["find_records"]["structured"]["records"][0]["id"]
        files = await ok(client, "list_case_files", case_id=case_id, limit=200)
    assert base64.b64decode(contents[0].blob) == b"Fuser ordered."
    assert listed["structured"] == files


def test_results_reach_langchain_as_text_and_file_blocks(run: tuple[Path, dict[str, Any], list[str]]) -> None:
    _, output, _ = run
    blocks = output["upload_attachment"]["content"]
    assert [block["type"] for block in blocks] == ["text", "file"]
    assert "langchain-note.txt" in blocks[0]["text"]
    assert blocks[1]["url"] == output["upload_attachment"]["structured"]["resource_uri"]
    # One resource_link per file; the adapters turn image links into image blocks, the rest into file blocks.
    files = output["list_case_files"]["structured"]["files"]
    links = output["list_case_files"]["content"][1:]
    assert [(block["type"], block["url"], block["mime_type"]) for block in links] == [
        ("image" if file["mime_type"].startswith("image/") else "file", file["resource_uri"], file["mime_type"])
        for file in files
    ]
