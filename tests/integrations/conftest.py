"""Fixtures of the agent-framework tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """$CRM_MCP_HOME for one test: a fresh local store with the demo data."""
    path = tmp_path / "crm-home"
    path.mkdir()
    return path
