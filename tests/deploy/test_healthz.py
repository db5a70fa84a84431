"""GET /healthz: what a load balancer probes. It needs no token and says nothing but "ok"; everything
else still needs the token."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.deploy.servers import server_env, start_http_server, stop, wait_healthy

pytestmark = [pytest.mark.integration]


def test_healthz_answers_without_the_token_and_mcp_still_needs_it(tmp_path: Path) -> None:
    server = start_http_server(tmp_path / "home", tmp_path, env=server_env(tmp_path / "home", CRM_MCP_TOKEN="s3cret"))
    try:
        wait_healthy(server)
        health = httpx.get(f"{server.base_url}/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        assert "s3cret" not in health.text
        assert httpx.head(f"{server.base_url}/healthz").status_code == 200

        # Only reading the health check is open: other methods and paths still need the token.
        assert httpx.post(f"{server.base_url}/healthz").status_code == 401
        assert httpx.get(f"{server.base_url}/healthz/../mcp").status_code == 401
        listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        assert httpx.post(server.mcp_url, json=listing).status_code == 401
    finally:
        stop(server.process)
