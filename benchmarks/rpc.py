"""The smallest MCP clients that can time a server: JSON-RPC lines over a child's pipes, and
JSON-RPC POSTs over streamable HTTP.

The `mcp` Python client reads a 20 MiB stdio message at about 1.4 MB/s, so timing through it
measures the client. These clients do nothing but write a request and read the answer's bytes;
the clock stops when the answer's last byte has arrived, before it is parsed.

Both speak the stateless 2026-07-28 revision: no `initialize`, the version and the client's
capabilities travel in each request's `_meta`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

__all__ = ["PROTOCOL_VERSION", "HttpPeer", "RpcError", "StdioPeer", "child_env", "params_with_meta"]

PROTOCOL_VERSION = "2026-07-28"


class RpcError(RuntimeError):
    """The server answered with a JSON-RPC error or a tool error."""


def params_with_meta(params: dict[str, Any] | None) -> dict[str, Any]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": PROTOCOL_VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    return {**(params or {}), "_meta": meta}


def _result(answer: dict[str, Any], method: str) -> dict[str, Any]:
    if "error" in answer:
        raise RpcError(f"{method}: {answer['error'].get('message')}")
    result: dict[str, Any] = answer["result"]
    if result.get("isError"):
        texts = " ".join(block.get("text", "") for block in result.get("content", []))
        raise RpcError(f"{method}: tool error: {texts}")
    return result


class StdioPeer:
    """A server process started with pipes; `call` sends one request and waits for its answer."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str], cwd: Path, stderr_path: Path) -> None:
        self._stderr = stderr_path.open("ab")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env, cwd=cwd
        )
        self._next_id = 0
        self.stderr_path = stderr_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def call(self, method: str, params: dict[str, Any] | None = None) -> tuple[float, dict[str, Any]]:
        """Seconds from writing the request to having read the whole answer line, and the result."""
        self._next_id += 1
        request_id = self._next_id
        line = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params_with_meta(params)})
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        start = time.perf_counter()
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()
        while True:
            raw = self.process.stdout.readline()
            if not raw:
                tail = self.stderr_path.read_text(errors="replace")[-2000:]
                raise RpcError(f"{method}: the server closed stdout (exit {self.process.poll()}); stderr ends:\n{tail}")
            elapsed = time.perf_counter() - start
            answer = json.loads(raw)
            if answer.get("id") == request_id:
                return elapsed, _result(answer, method)
            # a notification (progress, log): not ours, keep reading

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()

    def __enter__(self) -> StdioPeer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class HttpPeer:
    """JSON-RPC over streamable HTTP (stateless) with one shared httpx connection pool."""

    def __init__(self, url: str, *, connections: int = 100) -> None:
        self.url = url
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(120.0),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )
        self._next_id = 0

    async def call(self, method: str, params: dict[str, Any] | None = None) -> tuple[float, dict[str, Any]]:
        self._next_id += 1
        body = {"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params_with_meta(params)}
        headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": PROTOCOL_VERSION,
            "Mcp-Method": method,
        }
        if params and "name" in params:
            headers["Mcp-Name"] = str(params["name"])
        start = time.perf_counter()
        response = await self.client.post(self.url, content=json.dumps(body), headers=headers)
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            raise RpcError(f"{method}: HTTP {response.status_code}: {response.text[:300]}")
        return elapsed, _result(_answer(response), method)

    async def aclose(self) -> None:
        await self.client.aclose()


def _answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC answer from a JSON body or the last `data:` event of an SSE body."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        answers = [json.loads(event) for event in events if event]
        return next(answer for answer in reversed(answers) if "id" in answer)
    parsed: dict[str, Any] = response.json()
    return parsed


REPO = Path(__file__).resolve().parent.parent


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The benchmark's environment for a child process, without its MCP configuration leaking in,
    importing crm_mcp from this checkout (the one the benchmark itself imports)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRM_MCP_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env
