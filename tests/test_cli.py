"""The `crm-mcp` command as a real process: check, serve over stdio, serve over HTTP with a token."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.helpers import text_of

pytestmark = pytest.mark.integration


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRM_MCP_")}
    return env | {"CRM_MCP_HOME": str(tmp_path / "home")} | extra


def run_cli(tmp_path: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crm_mcp", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env_for(tmp_path, **extra_env),
        check=False,
    )


# ------------------------------------------------------------------------------------------ check


def test_check_reports_each_backend_and_succeeds(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "check")
    assert done.returncode == 0, done.stderr
    assert "local (local): ok" in done.stdout


def test_check_fails_on_a_bad_configuration_and_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "crm-mcp.toml").write_text('[backends.x]\nvendor = "local"\ncolour = "red"\n')
    done = run_cli(tmp_path, "check")
    assert done.returncode == 2
    assert "[backends.x] colour: unknown key" in done.stderr


def test_check_fails_when_a_backend_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    (tmp_path / "crm-mcp.toml").write_text(f'[backends.broken]\nvendor = "local"\npath = "{blocker}/store"\n')
    done = run_cli(tmp_path, "check")
    assert done.returncode == 1
    assert "broken (local): FAILED" in done.stdout


def test_version(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "--version")
    assert done.stdout.startswith("crm-mcp ")


# ------------------------------------------------------------------------------------------ stdio


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_stdio_round_trip_upload_list_read(tmp_path: Path, mode: str) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "crm_mcp", "serve"], env=env_for(tmp_path), cwd=str(tmp_path)
    )
    async with Client(params, mode=mode) as client:
        tools = await client.list_tools()
        assert len(tools.tools) == 8
        found = await client.call_tool("find_records", {"record_type": "case", "query": "Printer on fire"})
        case_id = found.structured_content["records"][0]["id"]
        uploaded = await client.call_tool(
            "upload_attachment", {"record_id": case_id, "file_name": "wire.txt", "content_text": "over stdio"}
        )
        assert not uploaded.is_error, text_of(uploaded)
        listing = await client.call_tool("list_case_files", {"case_id": case_id})
        names = [file["name"] for file in listing.structured_content["files"]]
        assert "wire.txt" in names
        read = await client.read_resource(uploaded.structured_content["resource_uri"])
        assert base64.b64decode(read.contents[0].blob) == b"over stdio"


# ------------------------------------------------------------------------------------------- http


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "crm_mcp", "serve", "--transport", "http", "--port", str(port)],
        cwd=tmp_path,
        env=env_for(tmp_path, CRM_MCP_TOKEN="test-token-123"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.TransportError:
            if process.poll() is not None:
                raise RuntimeError(process.stderr.read().decode() if process.stderr else "server exited")  # noqa: B904
            time.sleep(0.1)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_http_without_token_is_401(http_server: str) -> None:
    response = httpx.post(http_server, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_http_with_wrong_token_is_401(http_server: str) -> None:
    response = httpx.post(
        http_server, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers={"Authorization": "Bearer no"}
    )
    assert response.status_code == 401


def test_http_foreign_host_header_is_refused(http_server: str) -> None:
    response = httpx.post(
        http_server,
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Authorization": "Bearer test-token-123", "Host": "evil.example.com"},
    )
    assert response.status_code in (403, 421)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_http_with_token_serves_tools(http_server: str, mode: str) -> None:
    async with (
        httpx2.AsyncClient(headers={"Authorization": "Bearer test-token-123"}) as http,
        Client(streamable_http_client(http_server, http_client=http), mode=mode) as client,
    ):
        listing = await client.call_tool("list_backends", {})
        assert listing.structured_content["default_backend"] == "local"
        found = await client.call_tool("find_records", {"record_type": "contact", "query": "Alexander Wilson"})
        assert found.structured_content["records"][0]["title"] == "Alexander Wilson"


def test_http_refuses_public_interface_without_token(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "serve", "--transport", "http", "--host", "0.0.0.0", "--port", str(free_port()))
    assert done.returncode == 2
    assert "without a bearer token" in done.stderr
