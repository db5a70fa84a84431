"""crm-mcp's tools in LangChain, over stdio, through langchain-mcp-adapters.

langchain-mcp-adapters requires mcp<2, crm-mcp requires mcp>=2.3: install LangChain in a virtual
environment of its own and start the `crm-mcp` installed elsewhere (pipx, uv tool, another venv).
Without a session, every tool call starts a new `crm-mcp serve` process; the local store is on
disk, so what one call uploads the next one lists.

    python3 -m venv lc && lc/bin/pip install "langchain-mcp-adapters==0.3.2"
    pipx install crm-mcp                      # puts crm-mcp on PATH
    lc/bin/python examples/langchain_tools.py

Hand the same tools to a model with `model.bind_tools(tools)` or `create_agent(model, tools)`.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_mcp_adapters.client import MultiServerMCPClient


async def call(tool: BaseTool, **arguments: Any) -> dict[str, Any]:
    """Invoke a tool the way an agent does (a tool call), so the structured result comes back too."""
    message = await tool.ainvoke({"type": "tool_call", "id": tool.name, "name": tool.name, "args": arguments})
    assert isinstance(message, ToolMessage)
    return {"status": message.status, "content": message.content, "structured": message.artifact["structured_content"]}


async def main() -> None:
    env = {name: value for name, value in os.environ.items() if name.startswith("CRM_MCP_")}
    client = MultiServerMCPClient({"crm": {"transport": "stdio", "command": "crm-mcp", "args": ["serve"], "env": env}})
    tools = {tool.name: tool for tool in await client.get_tools()}

    found = await call(tools["find_records"], record_type="case", query="Printer on fire")
    case_id = found["structured"]["records"][0]["id"]
    uploaded = await call(
        tools["upload_attachment"], record_id=case_id, file_name="langchain-note.txt", content_text="Fuser ordered."
    )
    listed = await call(tools["list_case_files"], case_id=case_id, limit=200)

    report = {
        "tools": sorted(tools),
        "model_schemas": {name: convert_to_openai_tool(tool)["function"] for name, tool in tools.items()},
        "find_records": found,
        "upload_attachment": uploaded,
        "list_case_files": listed,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
