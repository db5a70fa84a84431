"""Start `crm-mcp serve --transport http` as a real process on a free loopback port, for the tests that
put real HTTP clients (the conformance suite, nginx) in front of it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; a race with other programs is possible
    but harmless in tests: the server would fail to start and the test says so)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(home: Path, **extra: str) -> dict[str, str]:
    """The test runner's environment without any crm-mcp setting, pointed at `home`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRM_MCP_")}
    pythonpath = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, "CRM_MCP_HOME": str(home), "PYTHONPATH": pythonpath, **extra}


@dataclass
class HttpServer:
    """A running server: its address, and its stderr log (uvicorn's access log at --log-level info)."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        return f"{self.base_url}/mcp"


def wait_healthy(server: HttpServer, timeout: float = 30.0) -> None:
    """Poll GET /healthz until it answers 200; fail with the server's log if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"crm-mcp exited with {server.process.returncode}:\n{server.log.read_text()}")
        try:
            if httpx.get(f"{server.base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"crm-mcp did not answer /healthz within {timeout:.0f} s:\n{server.log.read_text()}")


def start_http_server(home: Path, workdir: Path, *args: str, env: dict[str, str] | None = None) -> HttpServer:
    """Start one server (not yet waited for); its stderr goes to a log file in `workdir`."""
    port = free_port()
    log = workdir / f"crm-mcp-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "crm_mcp", "serve", "--transport", "http", "--port", str(port), *args],
            cwd=workdir,
            env=env or server_env(home),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return HttpServer(process=process, port=port, log=log)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def http_servers(
    home: Path, workdir: Path, count: int = 1, args: Sequence[str] = (), token: str | None = None
) -> Iterator[list[HttpServer]]:
    """`count` servers on one CRM_MCP_HOME (with `token`, if given, as CRM_MCP_TOKEN), started at the
    same moment (so a shared local store sees a concurrent first start), each healthy before the block
    runs; all stopped afterwards."""
    env = server_env(home, **({"CRM_MCP_TOKEN": token} if token else {}))
    servers: list[HttpServer] = []
    try:
        for _ in range(count):
            servers.append(start_http_server(home, workdir, *args, env=env))
        for server in servers:
            wait_healthy(server)
        yield servers
    finally:
        for server in servers:
            stop(server.process)
