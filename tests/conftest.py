"""Shared fixtures: settings in a temporary home, and an in-process MCP client on the full server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from mcp import Client

from crm_mcp.config import Settings, load_settings
from crm_mcp.server import build_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def files_root(tmp_path: Path) -> Path:
    """The one folder path sources and save_file may use in these tests."""
    root = tmp_path / "files"
    root.mkdir()
    return root


@pytest.fixture
def make_settings(tmp_path: Path, files_root: Path) -> Callable[..., Settings]:
    """Settings from TOML text (default: none), with $CRM_MCP_HOME in tmp_path and files_root as root."""

    def make(toml: str = "", env: dict[str, str] | None = None) -> Settings:
        config = tmp_path / "crm-mcp.toml"
        text = toml if "[files]" in toml else f'{toml}\n[files]\nroots = ["{files_root}"]\n'
        config.write_text(text, encoding="utf-8")
        return load_settings(str(config), env={"CRM_MCP_HOME": str(tmp_path / "home"), **(env or {})}, cwd=tmp_path)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with Client(build_server(settings)) as connected:
        yield connected
