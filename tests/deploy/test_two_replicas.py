"""Two `crm-mcp serve --transport http` replicas behind a real nginx (round-robin), sharing one
CRM_MCP_HOME: the HTTP transport keeps no per-session state, so any replica serves any request.

nginx adds an `X-Upstream` response header and logs `$upstream_addr` for every request, so the test
sees which replica answered each MCP call: an upload lands on one replica and is read back through
the other, a listing from one is read through the other, and concurrent uploads through both end up
in the one shared store. The proxy's body-size limit is the one the README recommends, derived from
the server's own: an upload over nginx's 1 MiB default passes, a body over the limit gets nginx's 413.

nginx comes from Debian's package: `.ci/run` installs it; this test installs it when it is missing and
it runs as root with apt-get, and fails saying how to install it otherwise.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.deploy.servers import HttpServer, free_port, http_servers, stop

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

TOKEN = "replica-token-7f3a"
MAX_TRANSFER_BYTES = 3_000_000


def proxy_body_limit(max_transfer_bytes: int) -> int:
    """What the README tells operators to give nginx's client_max_body_size: crm-mcp's own request
    limit (base64 in JSON is 4/3 of the bytes, plus room for the envelope)."""
    return max_transfer_bytes * 4 // 3 + 1024 * 1024


def _nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "nginx"],
            check=True,
            capture_output=True,
            timeout=600,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        return shutil.which("nginx") or "/usr/sbin/nginx"
    pytest.fail("nginx is needed for the two-replica test: apt-get install nginx (as root)")


def nginx_config(workdir: Path, port: int, upstreams: list[int], body_limit: int) -> str:
    # Root's workers would otherwise run as nobody, who cannot write the temp paths in our 0700 tmp dir.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    servers = "\n".join(f"    server 127.0.0.1:{upstream};" for upstream in upstreams)
    temp = "\n".join(
        f"  {kind}_temp_path {workdir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
{user}
worker_processes 1;
daemon off;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} notice;
events {{ worker_connections 64; }}
http {{
{temp}
  log_format upstream '$upstream_addr $status "$request" mcp_method="$http_mcp_method"';
  access_log {workdir / "access.log"} upstream;
  upstream crm_mcp {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size {body_limit};
    add_header X-Upstream $upstream_addr always;
    # As the README's Deployment section shows it:
    location /mcp {{
      proxy_pass http://crm_mcp;
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 300s;
    }}
    location = /healthz {{
      proxy_pass http://crm_mcp;
    }}
  }}
}}
"""


@dataclass
class Deployment:
    url: str
    replicas: list[HttpServer]
    access_log: Path
    log_offset: int = 0
    """Where this test's lines start in nginx's access log."""
    answered_by: list[tuple[str, str]] = field(default_factory=list)
    """(JSON-RPC method and tool name or URI, replica port) for every MCP response, in order."""

    def port_of(self, what: str) -> list[str]:
        return [port for call, port in self.answered_by if call == what]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Started once for the module (a replica takes seconds to start on a busy machine)."""
    nginx = _nginx_binary()
    tmp_path = tmp_path_factory.mktemp("replicas")
    config = tmp_path / "crm-mcp.toml"
    config.write_text(f"[limits]\nmax_transfer_bytes = {MAX_TRANSFER_BYTES}\n", encoding="utf-8")
    home = tmp_path / "home"
    with http_servers(home, tmp_path, count=2, args=["--config", str(config)], token=TOKEN) as replicas:
        port = free_port()
        nginx_dir = tmp_path / "nginx"
        nginx_dir.mkdir()
        conf = nginx_dir / "nginx.conf"
        body_limit = proxy_body_limit(MAX_TRANSFER_BYTES)
        conf.write_text(nginx_config(nginx_dir, port, [r.port for r in replicas], body_limit), encoding="utf-8")
        process = subprocess.Popen(
            [nginx, "-p", str(nginx_dir), "-e", str(nginx_dir / "error.log"), "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"nginx exited: {process.stderr.read().decode() if process.stderr else ''}")
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "nginx did not come up"
                time.sleep(0.1)
            yield Deployment(url=url, replicas=replicas, access_log=nginx_dir / "access.log")
        finally:
            stop(process)  # type: ignore[arg-type]


@pytest.fixture
def deployment(running: Deployment) -> Deployment:
    """The running deployment, with this test's own record of who answered what."""
    return Deployment(
        url=running.url,
        replicas=running.replicas,
        access_log=running.access_log,
        log_offset=running.access_log.stat().st_size,
    )


def _call_name(body: bytes) -> str:
    message: dict[str, Any] = json.loads(body)
    params = message.get("params") or {}
    return f"{message.get('method')} {params.get('name') or params.get('uri') or ''}".strip()


async def _client_for(deployment: Deployment) -> httpx2.AsyncClient:
    async def record(response: httpx2.Response) -> None:
        if response.request.method == "POST" and response.request.content:
            upstream = response.headers.get("x-upstream", "")
            deployment.answered_by.append((_call_name(response.request.content), upstream.rpartition(":")[2]))

    return httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60, event_hooks={"response": [record]}
    )


async def _ok(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_calls_through_nginx_land_on_both_replicas_and_share_one_store(deployment: Deployment, mode: str) -> None:
    ports = {str(replica.port) for replica in deployment.replicas}
    payload = os.urandom(1_500_000)  # 2 MB of base64: over nginx's 1 MiB default body limit
    async with (
        await _client_for(deployment) as http,
        Client(streamable_http_client(f"{deployment.url}/mcp", http_client=http), mode=mode) as client,
    ):
        found = await _ok(client, "find_records", record_type="case", query="Printer on fire")
        case_id = found["records"][0]["id"]

        big = await _ok(
            client,
            "upload_attachment",
            record_id=case_id,
            file_name=f"scan-{mode}.bin",
            content_base64=base64.b64encode(payload).decode(),
        )
        assert big["size"] == len(payload)
        note = f"uploaded through nginx ({mode})\n"
        small = await _ok(
            client, "upload_attachment", record_id=case_id, file_name=f"note-{mode}.txt", content_text=note
        )
        upload_port = deployment.port_of("tools/call upload_attachment")[-1]

        # Read the upload until the other replica answers (round-robin: the next request or so).
        for _ in range(4):
            read = await client.read_resource(small["resource_uri"])
            if deployment.port_of(f"resources/read {small['resource_uri']}")[-1] != upload_port:
                break
        else:
            pytest.fail(f"every read went to replica {upload_port}: {deployment.answered_by}")
        (content,) = read.contents
        assert base64.b64decode(content.blob).decode() == note
        if mode == "auto":
            # 2 MB of base64 back through the proxy. (Not in legacy mode: there the SDK's client takes
            # the result as one server-sent event, and its SSE reader refuses events over 1 MiB.)
            (content,) = (await client.read_resource(big["resource_uri"])).contents
            assert base64.b64decode(content.blob) == payload

        # A listing from one replica, its files read back through the other.
        listed = await _ok(client, "list_case_files", case_id=case_id, limit=200)
        list_port = deployment.port_of("tools/call list_case_files")[-1]
        assert {big["resource_uri"], small["resource_uri"]} <= {file["resource_uri"] for file in listed["files"]}
        readable = [f["resource_uri"] for f in listed["files"] if f["resource_uri"] and (f["size"] or 0) < 500_000]
        other_reads = 0
        for listed_uri in readable:
            await client.read_resource(listed_uri)
            other_reads += deployment.port_of(f"resources/read {listed_uri}")[-1] != list_port
        assert other_reads >= 1, deployment.answered_by

        # Concurrent uploads through nginx: both replicas write to the one SQLite store at once.
        names = [f"parallel-{mode}-{n}.txt" for n in range(6)]

        async def upload(name: str) -> None:
            await _ok(client, "upload_attachment", record_id=case_id, file_name=name, content_text=name)

        async with anyio.create_task_group() as group:
            for name in names:
                group.start_soon(upload, name)
        listed = await _ok(client, "list_case_files", case_id=case_id, limit=200)
        assert set(names) <= {file["name"] for file in listed["files"]}

    assert {port for _, port in deployment.answered_by} == ports, deployment.answered_by
    for replica in deployment.replicas:
        assert replica.process.poll() is None, replica.log.read_text()
    # nginx's own record agrees: MCP POSTs went to both upstreams.
    logged = re.findall(
        r"^127\.0\.0\.1:(\d+) 200 \"POST /mcp ",
        deployment.access_log.read_text()[deployment.log_offset :],
        re.MULTILINE,
    )
    assert set(logged) == ports


async def test_a_body_over_the_proxy_limit_is_refused_by_nginx_before_any_replica(deployment: Deployment) -> None:
    oversized = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"content_base64":"'
    oversized += b"A" * proxy_body_limit(MAX_TRANSFER_BYTES) + b'"}}}'
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        response = await http.post(
            f"{deployment.url}/mcp",
            content=oversized,
            headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
        )
    assert response.status_code == 413
    assert not response.headers.get("x-upstream")  # never proxied


async def test_the_token_still_guards_every_replica_behind_the_proxy(deployment: Deployment) -> None:
    async with httpx2.AsyncClient() as http:
        statuses = {
            (
                await http.post(f"{deployment.url}/mcp", json={"jsonrpc": "2.0", "id": n, "method": "tools/list"})
            ).status_code
            for n in range(4)  # round-robin: both replicas are asked
        }
        assert statuses == {401}
        assert (await http.get(f"{deployment.url}/healthz")).status_code == 200
