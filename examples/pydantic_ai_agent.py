"""crm-mcp as the toolset of a pydantic-ai agent, over stdio.

pydantic-ai 2.x connects to MCP servers with `MCPToolset` (1.x had `MCPServerStdio`). The model
here is a scripted `FunctionModel`, so the example runs without an LLM or an API key: it finds case
CS-1001, lists its files and reads the technician notes, the way a real model would. Put a real
model in its place (for example `Agent("openai:gpt-5", toolsets=[crm_toolset()])`) and the model
chooses the calls itself.

    pip install crm-mcp "pydantic-ai-slim[mcp]==2.68.0"
    python examples/pydantic_ai_agent.py      # prints every tool call and the result the agent got
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from fastmcp.client.transports import StdioTransport
from pydantic_ai import Agent
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel


def crm_toolset() -> MCPToolset[None]:
    """`crm-mcp serve` as a child process; stdio clients pass on only the variables they are given."""
    env = {name: value for name, value in os.environ.items() if name.startswith("CRM_MCP_")}
    return MCPToolset(StdioTransport(command="crm-mcp", args=["serve"], env=env))


def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Stands in for an LLM: each step picks the next tool call from the last tool result."""
    returns = [part for message in messages for part in message.parts if isinstance(part, ToolReturnPart)]
    if not returns:
        return ModelResponse(parts=[ToolCallPart("find_records", {"record_type": "case", "query": "Printer on fire"})])
    last = returns[-1]
    if last.tool_name == "find_records":
        case_id = last.content["records"][0]["id"]
        return ModelResponse(parts=[ToolCallPart("list_case_files", {"case_id": case_id})])
    if last.tool_name == "list_case_files":
        # The listing arrives as its text block followed by one resource_link URI per file.
        text, *uris = last.content
        notes = next(line for line in text.splitlines() if line.startswith("- technician-notes.txt"))
        uri = next(uri for uri in uris if uri in notes)
        return ModelResponse(parts=[ToolCallPart("read_file", {"resource_uri": uri})])
    # read_file gives a text file's text in its structured result, which is what pydantic-ai passes on.
    action = next(line for line in last.content["text"].splitlines() if line.startswith("Action:"))
    return ModelResponse(parts=[TextPart(f"{last.content['name']} says: {action}")])


async def main() -> None:
    agent = Agent(FunctionModel(scripted_model), toolsets=[crm_toolset()])
    result = await agent.run("What do the technician notes of the printer fire case say?")
    received: list[dict[str, Any]] = [
        {"tool": part.tool_name, "content": part.content}
        for message in result.all_messages()
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    ]
    print(json.dumps({"tool_results": received, "output": result.output}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
