"""The HTTP transport's own defences over a real `crm-mcp serve --transport http` process: the bearer
token (compared in constant time), Host and Origin checks, a request-body limit that fits the
largest upload, and a clear 401, 403 and 413 for each refusal. The token never reaches the log."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from crm_mcp import cli
from tests.security.leaks import find_leaks
from tests.test_cli import env_for, free_port

pytestmark = pytest.mark.integration

TOKEN = "bearer-Tk5Lp6WsQ2"
LIMIT = 60_000
"""limits.max_transfer_bytes of the server under test."""
LIST_TOOLS = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]

    def post(self, body: Any, *, token: str | None = TOKEN, **headers: str) -> httpx.Response:
        sent = {**HEADERS, **headers} | ({"Authorization": f"Bearer {token}"} if token else {})
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(self.url, content=content, headers=sent, timeout=30)

    def stop(self) -> str:
        """Stop the server and return everything it wrote to stderr."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        assert self.process.stderr is not None
        return self.process.stderr.read().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("http")
    (folder / "crm-mcp.toml").write_text(f"[limits]\nmax_transfer_bytes = {LIMIT}\n")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "crm_mcp", "serve", "--transport", "http", "--port", str(port), "--log-level", "debug"],
        cwd=folder,
        env=env_for(folder, CRM_MCP_TOKEN=TOKEN),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = Served(f"http://127.0.0.1:{port}/mcp", process)
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(server.stop()) from None
            time.sleep(0.1)
    try:
        yield server
    finally:
        server.stop()


def _tool_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


def _result(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC answer, from a JSON body or the first SSE `data:` line."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        line = next(line for line in response.text.splitlines() if line.startswith("data:"))
        return json.loads(line.removeprefix("data:"))
    return response.json()


def test_without_a_token_401_says_how_to_authenticate(served: Served) -> None:
    response = served.post(LIST_TOOLS, token=None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in response.json()["error_description"]


def test_a_token_that_differs_only_at_the_end_is_401(served: Served) -> None:
    assert served.post(LIST_TOOLS, token=TOKEN[:-1] + "X").status_code == 401
    assert served.post(LIST_TOOLS, token=TOKEN + "X").status_code == 401
    assert served.post(LIST_TOOLS, token=TOKEN).status_code == 200


def test_a_foreign_origin_is_403(served: Served) -> None:
    response = served.post(LIST_TOOLS, Origin="http://evil.example.com")
    assert response.status_code == 403
    assert "origin" in response.text.lower()


def test_a_foreign_host_is_refused(served: Served) -> None:
    response = served.post(LIST_TOOLS, Host="evil.example.com")
    assert response.status_code in (403, 421)
    assert "host" in response.text.lower()


BODY_LIMIT = LIMIT * 4 // 3 + 1024 * 1024


def test_a_body_over_the_limit_is_413_naming_the_limit_and_what_to_do(served: Served) -> None:
    response = served.post(b"{" + b" " * BODY_LIMIT + b"}")
    assert response.status_code == 413
    description = response.json()["error_description"]
    assert f"limit of {BODY_LIMIT:,}" in description and "path or url source" in description


def test_a_body_without_a_length_is_stopped_at_the_limit_with_413(served: Served) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"{"
        for _ in range(BODY_LIMIT // 65536 + 2):
            yield b" " * 65536

    headers = {**HEADERS, "Authorization": f"Bearer {TOKEN}"}
    response = httpx.post(served.url, content=chunks(), headers=headers, timeout=30)
    assert response.status_code == 413
    assert "too large" in response.text.lower()


def test_the_largest_allowed_upload_fits_the_body_limit(served: Served) -> None:
    """An upload of exactly max_transfer_bytes as base64 passes the transport; one byte more is
    refused by the tool itself, with its own clear message (not by a bare 413)."""
    largest = base64.b64encode(b"\x00" * LIMIT).decode()
    found = _result(served.post(_tool_call("find_records", {"record_type": "case", "query": "Printer on fire"})))
    case = found["result"]["structuredContent"]["records"][0]["id"]
    arguments = {"record_id": case, "file_name": "largest.bin", "content_base64": largest}
    accepted = served.post(_tool_call("upload_attachment", arguments))
    assert accepted.status_code == 200
    assert not _result(accepted)["result"].get("isError"), accepted.text[:500]
    over = dict(arguments, content_base64=base64.b64encode(b"\x00" * (LIMIT + 1)).decode())
    refused = served.post(_tool_call("upload_attachment", over))
    assert refused.status_code == 200
    answer = _result(refused)["result"]
    assert answer["isError"] and "transfer limit" in answer["content"][0]["text"]


def test_the_token_never_reaches_the_log(served: Served) -> None:
    served.post(LIST_TOOLS)
    served.post(LIST_TOOLS, token=TOKEN + "-wrong")
    log = served.stop()
    assert "starting on http://127.0.0.1" in log  # the log was captured at all
    assert find_leaks(log, [TOKEN]) == []


@pytest.mark.anyio
async def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []

    def spy(given: bytes, expected: bytes) -> bool:
        compared.append((given, expected))
        return given == expected

    monkeypatch.setattr(cli.hmac, "compare_digest", spy)
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a refused request must not reach the app")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    middleware = cli.BearerTokenMiddleware(app, TOKEN)
    scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": [(b"authorization", b"Bearer nope")]}
    await middleware(scope, None, send)
    assert compared == [(b"Bearer nope", f"Bearer {TOKEN}".encode())]
    assert sent[0]["status"] == 401
