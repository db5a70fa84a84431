"""The baseline server: a minimal `MCPServer` (mcp 2.3.0) with one tool, `ping`.

Given a listing spec instead (`"kind": "listing"`), it adds the tool `listing`: the HTTP requests
crm-mcp's backend made for `list_case_files`, replayed, with the CRM's answers returned as they came
(case 4's floor: what any MCP server pays per call on top of the CRM's requests).

Given a fetch spec (a JSON file, first argument), it also serves the resource `bench://payload`:
the same bytes crm-mcp serves, fetched from the same simulator with one httpx request (the one
crm-mcp's backend itself made for the bytes, replayed) and returned whole — the least work any
MCP server can do for that file, so the gap to crm-mcp is what crm-mcp adds.

Where the vendor wraps the file in base64 (Wello's JSON `file_content`, SuperOffice's SOAP
`base64Binary`), the one base64 run in the answer is decoded; for the local backend the bytes are
read from the store's file. Nothing is imported beyond what the SDK needs until a read arrives.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer

server = MCPServer("minimal")
_NOT_REPLAYED = ("host", "content-length")


@server.tool()
def ping() -> str:
    """Answer "pong"."""
    return "pong"


def _add_payload(spec: dict[str, Any]) -> None:
    clients: list[Any] = []  # one httpx client, made at the first read and kept (its pool stays warm)

    @server.resource("bench://payload", mime_type="application/octet-stream")
    async def payload() -> bytes:
        if spec["kind"] == "file":
            import anyio

            return await anyio.Path(spec["path"]).read_bytes()
        import httpx

        if not clients:
            clients.append(httpx.AsyncClient(timeout=300))
        headers = [(key, value) for key, value in spec["headers"] if key.lower() not in ("host", "content-length")]
        body = await anyio_read(spec["body_path"]) if spec.get("body_path") else None
        response = await clients[0].request(spec["method"], spec["url"], headers=headers, content=body)
        data = response.content
        if spec["decode"] == "base64-run":
            import base64
            import re

            run = max(re.findall(rb"[A-Za-z0-9+/]{64,}={0,2}", data), key=len)
            data = base64.b64decode(run)
        return data


def _add_listing(spec: dict[str, Any]) -> None:
    """Case 4's floor: a tool that sends the requests crm-mcp's backend sent for a listing (replayed
    one after the other) and returns the CRM's answers as they came, JSON parsed where it is JSON."""
    clients: list[Any] = []

    @server.tool()
    async def listing() -> dict[str, Any]:
        """Replay the recorded listing requests; return the CRM's answers."""
        import httpx

        if not clients:
            clients.append(httpx.AsyncClient(timeout=300))
        answers: list[Any] = []
        for request in spec["requests"]:
            headers = [
                (key, value) for key, value in request["headers"] if key.lower() not in ("host", "content-length")
            ]
            body = await anyio_read(request["body_path"]) if request.get("body_path") else None
            response = await clients[0].request(request["method"], request["url"], headers=headers, content=body)
            is_json = response.headers.get("content-type", "").startswith("application/json")
            answers.append(response.json() if is_json else response.text)
        return {"answers": answers}


async def anyio_read(path: str) -> bytes:
    import anyio

    return await anyio.Path(path).read_bytes()


def _serve_http(port: int) -> None:
    """Streamable HTTP, stateless, as `crm-mcp serve --transport http` serves it (case 5's floor)."""
    import uvicorn

    app = server.streamable_http_app(stateless_http=True, host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    http_port = None
    if "--http" in arguments:  # --http PORT
        at = arguments.index("--http")
        http_port = int(arguments[at + 1])
        del arguments[at : at + 2]
    if arguments:
        given = json.loads(Path(arguments[0]).read_text())
        (_add_listing if given["kind"] == "listing" else _add_payload)(given)
    if http_port is None:
        server.run()
    else:
        _serve_http(http_port)
