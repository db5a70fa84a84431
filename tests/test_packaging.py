"""What a newcomer relies on before any code runs: the README's two commands, the CI script that
runs the second one, and the package metadata behind `pip install .`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def readme_commands() -> list[str]:
    """The command lines of the README's first code block (comments dropped)."""
    block = re.search(r"```bash\n(.*?)```", README, re.DOTALL)
    assert block, "the README must open with a bash block holding its two commands"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_starts_with_install_and_run_then_test() -> None:
    install_and_run, test = readme_commands()
    assert install_and_run == "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/crm-mcp serve"
    assert test == 'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/python -m pytest'


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    _, test = readme_commands()
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert test in ci.splitlines()


def test_package_metadata_matches_the_readme() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["requires-python"] == ">=3.11"
    assert project["scripts"] == {"crm-mcp": "crm_mcp.cli:main"}
    assert any(requirement.startswith("pytest") for requirement in project["optional-dependencies"]["dev"])
    names = {re.split(r"[<>=\[ ]", requirement, maxsplit=1)[0] for requirement in project["dependencies"]}
    assert {"mcp", "httpx", "pydantic", "anyio"} <= names
    for extra in names - {"mcp", "httpx", "pydantic", "anyio"}:
        assert f"`{extra}`" in README, f"dependency {extra} is not justified in the README"


@pytest.fixture
def fresh_install(tmp_path: Path) -> Path:
    """A new venv with this repository installed by `pip install .` (dependencies from the index)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q", str(REPO)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-4000:]
    return venv


@pytest.mark.integration
async def test_the_readmes_first_command_works_in_a_fresh_virtual_environment(
    fresh_install: Path, tmp_path: Path
) -> None:
    """`python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/crm-mcp serve`, as a newcomer
    runs it: a new venv (packages from the index, as on a fresh machine), then the installed script
    serves the demo store over stdio."""
    home = tmp_path / "home"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CRM_MCP_", "PYTHON"))}
    params = StdioServerParameters(
        command=str(fresh_install / "bin" / "crm-mcp"),
        args=["serve"],
        env=env | {"CRM_MCP_HOME": str(home)},
        cwd=tmp_path,
    )
    async with Client(params) as client:
        assert len((await client.list_tools()).tools) == 8
        found = await client.call_tool("find_records", {"record_type": "case", "query": "Printer on fire"})
        (case,) = found.structured_content["records"]
        listing = await client.call_tool("list_case_files", {"case_id": case["id"]})
        assert len(listing.structured_content["files"]) >= 3
        assert len((await client.list_prompts()).prompts) >= 3
    assert (home / "local" / "crm.sqlite3").is_file()  # the store went where CRM_MCP_HOME says
