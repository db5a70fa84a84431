"""The `crm-mcp` command as a real process: check, serve over stdio, serve over HTTP with a token."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


# ------------------------------------------------------------------------------ check and secrets

SECRETS = {"S_PASSWORD": "pw-7f3a9c", "S_API_KEY": "key-51be0d", "S_SECRET_KEY": "hmac-c28e44", "S_APP": "app-9d0e17"}
COOKIE = "cookie-4b1f88"
VENDOR_TOML = {
    "creatio": 'url = "{url}"\nusername = "Supervisor"\npassword = "${{S_PASSWORD}}"\n',
    "espocrm": 'url = "{url}"\napi_key = "${{S_API_KEY}}"\nsecret_key = "${{S_SECRET_KEY}}"\n',
    "wello": 'url = "{url}"\nusername = "api"\npassword = "${{S_PASSWORD}}"\ndomain = "acme"\n',
    "superoffice": (
        'url = "{url}/Cust1"\nusername = "u"\npassword = "${{S_PASSWORD}}"\napplication_token = "${{S_APP}}"\n'
    ),
}


class _Echo(BaseHTTPRequestHandler):
    """A hostile or broken CRM: answers everything with an error page that repeats the whole request
    (headers and body, as some proxies' and debug pages do) and sets a session cookie."""

    status = 500

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = f"{self.requestline}\n{self.headers}\n".encode() + (self.rfile.read(length) if length else b"")
        self.send_response(self.status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Set-Cookie", f"SESSION={COOKIE}; Path=/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


def _leaked(text: str) -> list[str]:
    """Secrets found in `text`, plainly or inside any base64 token (e.g. a Basic authorization)."""
    needles = [*SECRETS.values(), COOKIE]
    found = [needle for needle in needles if needle in text]
    for token in re.findall(r"[A-Za-z0-9+/]{12,}={0,2}", text):
        try:
            decoded = base64.b64decode(token + "=" * (-len(token) % 4)).decode("utf-8", "replace")
        except ValueError:
            continue
        found += [f"{needle} (base64)" for needle in needles if needle in decoded]
    return found


@pytest.mark.parametrize("status", [401, 500])
@pytest.mark.parametrize(
    "vendor",
    [
        "creatio",
        "espocrm",
        "wello",
        "superoffice",
    ],
)
def test_check_never_shows_a_secret_even_when_the_crm_echoes_it(tmp_path: Path, vendor: str, status: int) -> None:
    handler = type("Echo", (_Echo,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        table = VENDOR_TOML[vendor].format(url=url)
        (tmp_path / "crm-mcp.toml").write_text(f'[backends.crm]\nvendor = "{vendor}"\n{table}')
        done = run_cli(tmp_path, "check", "--log-level", "debug", **SECRETS)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"crm ({vendor}): FAILED" in done.stdout
    assert _leaked(done.stdout) == []
    assert _leaked(done.stderr) == []


def test_check_of_an_unreachable_crm_names_it_and_fails(tmp_path: Path) -> None:
    closed = free_port()
    table = VENDOR_TOML["creatio"].format(url=f"http://127.0.0.1:{closed}")
    (tmp_path / "crm-mcp.toml").write_text(f'[backends.crm]\nvendor = "creatio"\n{table}')
    done = run_cli(tmp_path, "check", **SECRETS)
    assert done.returncode == 1
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("crm ")]
    assert "FAILED" in line and f"127.0.0.1:{closed}" in line
    assert _leaked(done.stdout + done.stderr) == []


# ------------------------------------------------------------------------------------ wire format


def test_stdio_stdout_carries_only_json_rpc_and_logs_go_to_stderr(tmp_path: Path) -> None:
    """With debug logging on, every stdout line must still be one JSON-RPC message."""
    process = subprocess.Popen(
        [sys.executable, "-m", "crm_mcp", "serve", "--log-level", "debug"],
        cwd=tmp_path,
        env=env_for(tmp_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    killer = threading.Timer(60, process.kill)
    killer.start()
    try:
        messages = [
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"},
                },
            },
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "find_records", "arguments": {"record_type": "contact", "query": "Wilson"}},
            },
        ]
        for message in messages:
            process.stdin.write(json.dumps(message) + "\n")
        process.stdin.flush()
        replies = {}
        while 2 not in replies:
            line = process.stdout.readline()
            assert line, "the server closed stdout early"
            reply = json.loads(line)  # a log line here would break every stdio client
            assert reply["jsonrpc"] == "2.0"
            if "id" in reply:
                replies[reply["id"]] = reply
        rest, errors = process.communicate(timeout=30)  # closes stdin: the server must then exit
    finally:
        killer.cancel()
    assert replies[1]["result"]["serverInfo"]["name"] == "crm-mcp"
    assert replies[2]["result"]["structuredContent"]["records"][0]["title"] == "Alexander Wilson"
    for line in rest.splitlines():
        json.loads(line)
    assert "DEBUG" in errors  # the logs exist, on stderr
    assert process.returncode == 0


# --------------------------------------------------------------------------------- stateless HTTP

_JSON_RPC_HEADERS = {"Accept": "application/json, text/event-stream", "Authorization": "Bearer test-token-123"}


def _sse_result(response: httpx.Response) -> dict[str, object]:
    (data,) = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    reply: dict[str, object] = json.loads(data)
    return reply


def test_http_is_stateless_no_session_and_any_request_stands_alone(http_server: str) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    first = httpx.post(http_server, json=initialize, headers=_JSON_RPC_HEADERS)
    assert first.status_code == 200
    assert "mcp-session-id" not in first.headers
    # No session to name: a request on a fresh connection, without initialize, is served.
    alone = httpx.post(
        http_server,
        json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        headers={**_JSON_RPC_HEADERS, "MCP-Protocol-Version": "2025-06-18"},
    )
    assert alone.status_code == 200
    tools = _sse_result(alone)["result"]["tools"]  # type: ignore[index]
    assert len(tools) == 8


def test_http_foreign_origin_is_refused(http_server: str) -> None:
    response = httpx.post(
        http_server,
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={**_JSON_RPC_HEADERS, "Origin": "http://evil.example.com"},
    )
    assert response.status_code == 403


def test_http_token_from_the_command_line_is_required_too(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "crm_mcp", "serve", "--transport", "http", "--port", str(port), "--token", "cli-tok"],
        cwd=tmp_path,
        env=env_for(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                refused = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=5)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        assert refused.status_code == 401
        headers = {**_JSON_RPC_HEADERS, "Authorization": "Bearer cli-tok", "MCP-Protocol-Version": "2025-06-18"}
        accepted = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers)
        assert accepted.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[backends.crm]\nvendor = "salesforce"\n', "[backends.crm] vendor: unknown vendor 'salesforce'"),
        ('[backends.crm]\nvendor = "creatio"\nurl = "x"\nusername = "u"\npassword = "p"\n', "[backends.crm] url:"),
        ('[backends.crm]\nvendor = "creatio"\nusername = "u"\npassword = "${NOT_SET_ANYWHERE}"\n', "NOT_SET_ANYWHERE"),
    ],
)
def test_serve_refuses_to_start_on_a_bad_configuration(tmp_path: Path, toml: str, expected: str) -> None:
    config = tmp_path / "elsewhere.toml"
    config.write_text(toml)
    done = run_cli(tmp_path, "serve", CRM_MCP_CONFIG=str(config))
    assert done.returncode == 2
    assert done.stdout == ""  # stdout is the protocol channel
    assert f"crm-mcp: configuration error: {config}: " in done.stderr
    assert expected in done.stderr
