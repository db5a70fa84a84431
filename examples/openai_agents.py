"""crm-mcp in the OpenAI Agents SDK, over stdio.

`MCPServerStdio` starts `crm-mcp serve`; the example lists the tools, calls two of them directly
(no model, no API key) and shows the tools as an `Agent` hands them to the model. With an
`OPENAI_API_KEY`, `await Runner.run(agent, "Which files does case CS-1001 have?")` lets the model
call them itself.

    pip install crm-mcp "openai-agents==0.24.0"
    python examples/openai_agents.py
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from agents import Agent, FunctionTool, RunContextWrapper
from agents.mcp import MCPServerStdio


async def main() -> None:
    env = {name: value for name, value in os.environ.items() if name.startswith("CRM_MCP_")}
    async with MCPServerStdio(
        params={"command": "crm-mcp", "args": ["serve"], "env": env},
        name="crm",
        cache_tools_list=True,
        client_session_timeout_seconds=60,  # the default 5 s is short for large uploads and reads
    ) as server:
        tools = await server.list_tools()
        found = await server.call_tool("find_records", {"record_type": "case", "query": "Printer on fire"})
        case_id = found.structured_content["records"][0]["id"]
        listed = await server.call_tool("list_case_files", {"case_id": case_id, "limit": 2})

        # What a model would be given: OpenAI models want strict JSON schemas.
        agent = Agent(
            name="CRM assistant",
            instructions="Help with the files kept in the CRM.",
            mcp_servers=[server],
            mcp_config={"convert_schemas_to_strict": True},
        )
        agent_tools = await agent.get_mcp_tools(RunContextWrapper(context=None))

    report: dict[str, Any] = {
        "tools": [tool.name for tool in tools],
        "find_records": found.structured_content,
        "list_case_files": {
            "is_error": listed.is_error,
            "structured": listed.structured_content,
            "content_types": [block.type for block in listed.content],
        },
        "agent_tools": {
            tool.name: {"strict": tool.strict_json_schema, "parameters": tool.params_json_schema}
            for tool in agent_tools
            if isinstance(tool, FunctionTool)
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
