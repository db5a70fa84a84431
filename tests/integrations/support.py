"""Shared pieces of the agent-framework tests: run an example from examples/ as a real process on a
store of its own, and ask the server itself (in-process, same store) what the right answers are.

The examples start `crm-mcp serve` by name, as a user's would: the `crm-mcp` script of the
environment running these tests goes first on PATH, so a framework in another virtual environment
(LangChain's) still starts this checkout's server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from crm_mcp.config import load_settings
from crm_mcp.server import build_server

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SERVER_SCRIPT = Path(sys.executable).parent / "crm-mcp"


def missing(reason: str) -> None:
    """A framework that cannot be installed: a failure in CI (CI=true), a skip on a developer's machine."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: integration tests may not be skipped)")
    pytest.skip(reason)


def require_modules(*modules: str) -> None:
    """The frameworks installed into this environment by the `dev` extra (`pip install -e ".[dev]"`)."""
    absent = [module for module in modules if find_spec(module) is None]
    if absent:
        missing(f"{', '.join(absent)} not installed: run .venv/bin/pip install -e '.[dev]'")


def run_example(
    python: str | Path, script: str, home: Path, server_dir: Path | None = None, timeout: float = 180
) -> dict[str, Any]:
    """Run examples/<script> as a user would and return the JSON it prints.

    `crm-mcp` is looked up in `server_dir` (default: this environment's scripts) first.
    """
    if not SERVER_SCRIPT.exists():
        pytest.fail(f"{SERVER_SCRIPT} not found: install this checkout into the test environment (pip install -e .)")
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRM_MCP_")}
    env["CRM_MCP_HOME"] = str(home)
    env["PATH"] = os.pathsep.join([str(server_dir or SERVER_SCRIPT.parent), env.get("PATH", "")])
    done = subprocess.run(
        [str(python), str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=home,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stderr[-4000:]}"
    output: dict[str, Any] = json.loads(done.stdout)
    return output


@asynccontextmanager
async def store(home: Path) -> AsyncIterator[Client]:
    """The server on the same store, in-process: the reference for what the frameworks received."""
    settings = load_settings(None, env={"CRM_MCP_HOME": str(home)}, cwd=home)
    async with Client(build_server(settings)) as client:
        yield client


def counting_server(folder: Path) -> tuple[Path, Path]:
    """A `crm-mcp` in `folder` that notes each start in a file, then execs the real server.

    Returns (the folder to put first on PATH, the file with one line per server process started).
    """
    starts = folder / "server-starts"
    script = folder / "crm-mcp"
    script.write_text(f'#!/bin/sh\necho "$$" >> "{starts}"\nexec "{SERVER_SCRIPT}" "$@"\n')
    script.chmod(0o755)
    return folder, starts
