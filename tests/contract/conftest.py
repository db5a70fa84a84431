"""The `crm` fixture: a connected in-process client per backend harness."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mcp import Client

from crm_mcp.config import load_settings
from crm_mcp.server import build_server
from tests.contract.harnesses import HARNESSES, Harness


@dataclass
class Crm:
    client: Client
    harness: Harness
    files_root: Path

    @property
    def backend(self) -> str:
        return self.harness.backend


@pytest.fixture(params=sorted(HARNESSES))
async def crm(request: pytest.FixtureRequest, tmp_path: Path, files_root: Path) -> AsyncIterator[Crm]:
    harness = HARNESSES[request.param]
    async with harness.start(tmp_path / "backend") as started:
        config = tmp_path / "crm-mcp.toml"
        # allow_private_urls: the suite serves URL sources from loopback.
        files = f'[files]\nroots = ["{files_root}"]\nallow_private_urls = true\n'
        config.write_text(
            f'default_backend = "{harness.backend}"\n{started.toml}\n{files}',
            encoding="utf-8",
        )
        settings = load_settings(str(config), env={"CRM_MCP_HOME": str(tmp_path / "home")}, cwd=tmp_path)
        async with Client(build_server(settings, transport=started.transport)) as client:
            yield Crm(client=client, harness=harness, files_root=files_root)
