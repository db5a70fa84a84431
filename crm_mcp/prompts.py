"""Prompts are Markdown files in `prompts/`, served as MCP prompts.

Each file starts with TOML front matter between `+++` lines — name, title, description and the
typed arguments — and its body is the prompt text with `{{argument}}` placeholders. Keeping them as
files lets people edit the wording without touching code.

    +++
    name = "review_case_files"
    title = "Review a case's attachments"
    description = "..."
    [[arguments]]
    name = "case"
    description = "..."
    required = true
    +++
    Find the case {{case}} with find_records, then ...
"""

from __future__ import annotations

import importlib.resources
import re
import tomllib
from collections.abc import Iterable
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.prompts.base import Prompt, PromptArgument
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PromptFile", "load_prompt_files", "prompt_directory", "register_prompts", "render"]

_FRONT_MATTER = re.compile(r"\A\+\+\+\s*\n(?P<meta>.*?)\n\+\+\+\s*\n(?P<body>.*)\Z", re.DOTALL)
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class PromptArgumentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    description: str
    required: bool = False
    default: str = ""


class PromptFile(BaseModel):
    """One parsed prompt file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    title: str
    description: str
    arguments: list[PromptArgumentSpec] = []
    body: str = ""


def prompt_directory() -> Traversable:
    """Where the prompt files are: inside the installed wheel (the data package
    `crm_mcp._prompt_files`), or `prompts/` of a source checkout (editable installs)."""
    try:
        return importlib.resources.files("crm_mcp._prompt_files")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "prompts"


def parse_prompt_file(path: Traversable) -> PromptFile:
    """Parse one file; `ValueError` naming the file when it is malformed (a packaging bug, not user input)."""
    match = _FRONT_MATTER.match(path.read_text(encoding="utf-8"))
    if not match:
        raise ValueError(f"{path}: a prompt file must start with TOML front matter between '+++' lines")
    meta: dict[str, Any] = tomllib.loads(match["meta"])
    prompt = PromptFile.model_validate({**meta, "body": match["body"].strip()})
    declared = {argument.name for argument in prompt.arguments}
    used = set(_PLACEHOLDER.findall(prompt.body))
    if used - declared:
        raise ValueError(f"{path}: placeholders without a declared argument: {sorted(used - declared)}")
    return prompt


def load_prompt_files(directory: Traversable | None = None) -> list[PromptFile]:
    """Every `*.md` prompt; none at all means a broken installation, which must not pass silently."""
    directory = directory or prompt_directory()
    files = sorted((entry for entry in directory.iterdir() if entry.name.endswith(".md")), key=lambda e: e.name)
    if not files:
        raise RuntimeError(f"no prompt files found in {directory}: the installation is incomplete")
    return [parse_prompt_file(path) for path in files]


def render(prompt: PromptFile, arguments: dict[str, Any]) -> str:
    """Fill the placeholders; missing optional arguments take their default."""
    values = {argument.name: str(arguments.get(argument.name) or argument.default) for argument in prompt.arguments}
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], prompt.body)


def _as_mcp_prompt(prompt: PromptFile) -> Prompt:
    def fn(**arguments: Any) -> str:
        return render(prompt, arguments)

    return Prompt(
        name=prompt.name,
        title=prompt.title,
        description=prompt.description,
        arguments=[
            PromptArgument(name=argument.name, description=argument.description, required=argument.required)
            for argument in prompt.arguments
        ],
        fn=fn,
    )


def register_prompts(server: MCPServer[Any], prompts: Iterable[PromptFile] | None = None) -> None:
    for prompt in load_prompt_files() if prompts is None else prompts:
        server.add_prompt(_as_mcp_prompt(prompt))
