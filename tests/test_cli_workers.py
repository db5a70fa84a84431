"""`crm-mcp serve --transport http --workers N`: several processes share the port, and each one answers.

Each worker is shown to answer on its own by freezing the others (SIGSTOP): a frozen process accepts no
connection, so a call that succeeds then was served by the one left running."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from tests.test_cli import env_for, free_port, run_cli

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the worker processes")

TOKEN = "worker-token-5e21"


def _workers(pid: int) -> list[int]:
    """The supervisor's worker processes (multiprocessing's spawned children, not its resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    found = []
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            found.append(int(child))
    return found


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[str, list[int]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "crm_mcp", "serve", "--transport", "http", "--port", str(port), "--workers", "2"],
        cwd=tmp_path,
        env=env_for(tmp_path, CRM_MCP_TOKEN=TOKEN),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(process.stderr.read().decode() if process.stderr else "server exited")
            workers = _workers(process.pid)
            if len(workers) == 2:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError("the two workers did not start within 60 s")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp", workers
    finally:
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGCONT)
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.anyio
async def test_each_of_two_workers_answers_on_its_own(two_workers: tuple[str, list[int]]) -> None:
    url, workers = two_workers
    for serving in workers:
        frozen = [worker for worker in workers if worker != serving]
        for worker in frozen:
            os.kill(worker, signal.SIGSTOP)
        try:
            async with (
                httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http,
                Client(streamable_http_client(url, http_client=http)) as client,
            ):
                listing = await client.call_tool("list_backends", {})
                assert listing.structured_content["default_backend"] == "local"
                found = await client.call_tool("find_records", {"record_type": "contact", "query": "Alexander Wilson"})
                assert found.structured_content["records"][0]["title"] == "Alexander Wilson"
        finally:
            for worker in frozen:
                os.kill(worker, signal.SIGCONT)


def test_workers_without_the_token_are_refused(two_workers: tuple[str, list[int]]) -> None:
    url, _ = two_workers
    for _attempt in range(4):  # new connections, so both workers are likely asked
        response = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert response.status_code == 401


def test_workers_need_the_http_transport(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "serve", "--workers", "2")
    assert done.returncode == 2
    assert "--workers needs --transport http" in done.stderr
    done = run_cli(tmp_path, "serve", "--transport", "http", "--workers", "0", "--port", str(free_port()))
    assert done.returncode == 2
    assert "--workers needs --transport http and a number of at least 1" in done.stderr
