"""Hypothesis profiles for the property tests, and one running server they all share.

`ci` (the default) runs a few hundred examples per tool, derandomized so a CI failure reproduces
locally; `long` (`HYPOTHESIS_PROFILE=long`) runs ten times as many with fresh randomness, for a
deliberate search before a release.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from mcp import Client

from crm_mcp.config import Settings
from crm_mcp.server import build_server

EXAMPLES_PER_TOOL = {"ci": 200, "long": 2000}

settings.register_profile(
    "ci",
    max_examples=EXAMPLES_PER_TOOL["ci"],
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "long",
    max_examples=EXAMPLES_PER_TOOL["long"],
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


class Served:
    """A connected in-memory MCP client driven from synchronous hypothesis tests through a portal
    (one server for all examples: starting one per example would dominate the run)."""

    def __init__(self, portal: BlockingPortal, client: Client) -> None:
        self._portal = portal
        self._client = client

    def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        return self._portal.call(self._client.call_tool, tool, arguments)

    def run(self, function: Callable[..., Any], *args: Any) -> Any:
        return self._portal.call(function, self._client, *args)


@contextmanager
def served(settings_: Settings, transport: httpx.AsyncBaseTransport | None = None) -> Iterator[Served]:
    with start_blocking_portal("asyncio") as portal:
        client = Client(build_server(settings_, transport=transport))
        with portal.wrap_async_context_manager(client) as connected:
            yield Served(portal, connected)


@pytest.fixture
def local_server(make_settings: Callable[..., Settings]) -> Iterator[Served]:
    with served(make_settings()) as server:
        yield server
