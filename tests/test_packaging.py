"""What a newcomer relies on before any code runs: the README's two commands, the CI script that
runs the second one, and the package metadata behind `pip install .`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

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
