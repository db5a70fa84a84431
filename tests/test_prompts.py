"""Prompts come from the files in prompts/ and are served with descriptions and arguments."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from crm_mcp.prompts import load_prompt_files, parse_prompt_file, render

pytestmark = pytest.mark.anyio


def test_every_prompt_file_parses_and_declares_its_placeholders() -> None:
    prompts = load_prompt_files()
    assert len(prompts) >= 3
    for prompt in prompts:
        assert prompt.description
        assert prompt.arguments


def test_undeclared_placeholder_is_a_packaging_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.md"
    path.write_text('+++\nname = "bad"\ntitle = "B"\ndescription = "d"\n+++\nHello {{who}}\n')
    with pytest.raises(ValueError, match="placeholders without a declared argument"):
        parse_prompt_file(path)


def test_optional_argument_takes_its_default() -> None:
    prompt = next(p for p in load_prompt_files() if p.name == "review_case_files")
    text = render(prompt, {"case": "CS-1001"})
    assert "CS-1001" in text
    assert "anything relevant to resolving the case" in text


async def test_prompts_are_listed_with_arguments(client: Client) -> None:
    prompts = {prompt.name: prompt for prompt in (await client.list_prompts()).prompts}
    assert {"attach_file_to_case", "review_case_files", "update_contact_photo"} <= set(prompts)
    arguments = {argument.name: argument for argument in prompts["update_contact_photo"].arguments or []}
    assert arguments["contact"].required is True
    assert arguments["contact"].description


async def test_get_prompt_fills_the_arguments(client: Client) -> None:
    result = await client.get_prompt("update_contact_photo", {"contact": "John Best", "image": "face.png"})
    (message,) = result.messages
    assert message.role == "user"
    assert "John Best" in message.content.text
    assert "face.png" in message.content.text


async def test_get_prompt_without_a_required_argument_fails(client: Client) -> None:
    with pytest.raises(MCPError, match=r"needs the argument\(s\): image") as caught:
        await client.get_prompt("update_contact_photo", {"contact": "John Best"})
    assert caught.value.error.code == -32602


async def test_unknown_prompt_lists_the_available_ones(client: Client) -> None:
    with pytest.raises(MCPError, match=r"available prompts: .*review_case_files"):
        await client.get_prompt("nope", {})


@pytest.mark.integration
def test_the_wheel_ships_the_prompts(tmp_path: Path) -> None:
    """A non-editable install finds prompts/ as the data package crm_mcp._prompt_files."""
    repo = Path(__file__).resolve().parent.parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(repo),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("crm_mcp-*.whl")
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    assert sorted(path.name for path in (unpacked / "crm_mcp" / "_prompt_files").iterdir()) == sorted(
        path.name for path in (repo / "prompts").glob("*.md")
    )
    names = subprocess.run(
        [sys.executable, "-c", "from crm_mcp.prompts import load_prompt_files; print(len(load_prompt_files()))"],
        env={**os.environ, "PYTHONPATH": str(unpacked)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(names.stdout) == len(list((repo / "prompts").glob("*.md")))
    # ... and the wheel declares the console script the README runs.
    (entry_points,) = unpacked.glob("crm_mcp-*.dist-info/entry_points.txt")
    assert "crm-mcp = crm_mcp.cli:main" in entry_points.read_text(encoding="utf-8").splitlines()


async def test_every_prompt_is_served_with_every_argument_filled_in(client: Client) -> None:
    listed = (await client.list_prompts()).prompts
    assert {prompt.name for prompt in listed} == {prompt.name for prompt in load_prompt_files()}
    for prompt in listed:
        assert prompt.description and prompt.title
        values = {argument.name: f"<value of {argument.name}>" for argument in prompt.arguments or []}
        result = await client.get_prompt(prompt.name, values)
        (message,) = result.messages
        text = message.content.text
        for value in values.values():
            assert value in text, f"{prompt.name} ignores {value}"
        assert "{{" not in text and "}}" not in text, prompt.name
