"""The README's "Connecting a client" section stays copy-pasteable: every JSON configuration parses and
runs `crm-mcp serve` over stdio in the client's format, and every Python snippet compiles and imports
only names that exist in the framework versions the examples are tested with."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from typing import Any

import pytest

from tests.integrations import langchain_env
from tests.integrations.support import REPO, missing, require_modules

pytestmark = pytest.mark.integration


def section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Connecting a client\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", section(), flags=re.DOTALL | re.MULTILINE)


def servers(config: dict[str, Any]) -> dict[str, Any]:
    """Claude Desktop and Cursor use `mcpServers`; VS Code uses `servers` with an explicit type."""
    if "servers" in config:
        return config["servers"]
    return config["mcpServers"]


def test_there_are_configurations_for_claude_desktop_vs_code_and_cursor() -> None:
    text = section()
    for heading in ("### Claude Desktop", "### VS Code", "### Cursor"):
        assert heading in text
    formats = [next(iter(json.loads(block))) for block in blocks("json")]
    assert formats.count("mcpServers") >= 2
    assert "inputs" in formats  # VS Code's file: inputs first, then servers


def test_each_configuration_runs_crm_mcp_serve_over_stdio() -> None:
    for block in blocks("json"):
        config = json.loads(block)
        (entry,) = servers(config).values()
        assert (entry["command"], entry["args"]) == ("crm-mcp", ["serve"])
        assert entry.get("type", "stdio") == "stdio"
        assert "CRM_MCP_CONFIG" in entry["env"]
        if "servers" in config:  # VS Code: every ${input:…} is declared in inputs, and secret
            used = set(re.findall(r"\$\{input:([^}]+)\}", json.dumps(entry)))
            assert used == {item["id"] for item in config["inputs"]}
            assert all(item.get("password") for item in config["inputs"])


def imports(snippet: str) -> list[str]:
    """The snippet's import statements, after checking that it compiles (top-level await allowed)."""
    compile(snippet, "<README>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    tree = ast.parse(snippet)
    return [ast.unparse(node) for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]


def test_python_snippets_compile_and_import_in_their_environments() -> None:
    require_modules("pydantic_ai", "fastmcp", "agents")
    snippets = blocks("python")
    assert len(snippets) >= 4  # the mcp SDK over HTTP, pydantic-ai, OpenAI Agents, LangChain
    by_environment: dict[str, list[str]] = {"crm-mcp": [], "langchain": []}
    for snippet in snippets:
        environment = "langchain" if "langchain" in snippet else "crm-mcp"
        by_environment[environment] += imports(snippet)
    assert by_environment["langchain"]
    try:
        langchain_python = langchain_env.build()
    except langchain_env.BuildError as exc:
        missing(f"cannot build LangChain's virtual environment: {exc}")
    for python, statements in (
        (sys.executable, by_environment["crm-mcp"]),
        (langchain_python, by_environment["langchain"]),
    ):
        done = subprocess.run(
            [str(python), "-c", "\n".join(statements)], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, f"{python}: {done.stderr[-2000:]}"


def test_examples_named_in_the_readme_exist() -> None:
    named = set(re.findall(r"\(examples/([a-z_]+\.py)\)", section()))
    assert named == {path.name for path in (REPO / "examples").glob("*.py")}
