"""Argument completion (`completion/complete`) through a real MCP client on the full server, and the
titles and descriptions clients show next to every tool, resource, template and prompt."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, PromptReference, ResourceTemplateReference

from crm_mcp.backends.local import LocalBackend
from crm_mcp.config import Settings
from crm_mcp.errors import BackendError
from crm_mcp.server import build_server
from crm_mcp.uris import FILE_TEMPLATE, PHOTO_TEMPLATE

pytestmark = pytest.mark.anyio


@pytest.fixture
async def two_backends(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[Client]:
    """The demo store as `main` (default) and an empty store as `archive`."""
    settings = make_settings(
        'default_backend = "main"\n'
        f'[backends.main]\nvendor = "local"\npath = "{tmp_path / "main"}"\n'
        f'[backends.archive]\nvendor = "local"\npath = "{tmp_path / "archive"}"\ndemo_data = false\n'
    )
    async with Client(build_server(settings)) as connected:
        yield connected


async def values(
    client: Client, ref: PromptReference | ResourceTemplateReference, name: str, value: str, **context: str
) -> list[str]:
    result = await client.complete(ref, {"name": name, "value": value}, context or None)
    return result.completion.values


def prompt(name: str) -> PromptReference:
    return PromptReference(type="ref/prompt", name=name)


def template(uri: str) -> ResourceTemplateReference:
    return ResourceTemplateReference(type="ref/resource", uri=uri)


async def test_the_completions_capability_is_declared(client: Client) -> None:
    assert client.server_capabilities.completions is not None


async def test_backend_names_complete_in_prompts_and_templates(two_backends: Client) -> None:
    assert await values(two_backends, prompt("attach_file_to_case"), "backend", "") == ["archive", "main"]
    assert await values(two_backends, prompt("attach_file_to_case"), "backend", "MA") == ["main"]
    assert await values(two_backends, template(FILE_TEMPLATE), "backend", "ar") == ["archive"]
    assert await values(two_backends, template(PHOTO_TEMPLATE), "backend", "") == ["archive", "main"]
    assert await values(two_backends, template(FILE_TEMPLATE), "backend", "x") == []


async def test_cases_complete_to_numbers_find_records_finds_again(client: Client) -> None:
    assert await values(client, prompt("review_case_files"), "case", "printer") == ["CS-1001", "CS-1004"]
    assert await values(client, prompt("attach_file_to_case"), "case", "CS-1001") == ["CS-1001"]
    found = await client.call_tool("find_records", {"record_type": "case", "query": "CS-1001"})
    assert [record["title"] for record in found.structured_content["records"]] == ["CS-1001 · Printer on fire"]
    assert await values(client, prompt("review_case_files"), "case", "") == []
    assert await values(client, prompt("review_case_files"), "case", "no such case anywhere") == []


async def test_contacts_complete_to_names(client: Client) -> None:
    assert await values(client, prompt("update_contact_photo"), "contact", "wilson") == ["Alexander Wilson"]


async def test_the_chosen_backend_is_the_one_searched(two_backends: Client) -> None:
    attach = prompt("attach_file_to_case")
    assert await values(two_backends, attach, "case", "fire") == ["CS-1001"]
    assert await values(two_backends, attach, "case", "fire", backend="main") == ["CS-1001"]
    assert await values(two_backends, attach, "case", "fire", backend="archive") == []
    assert await values(two_backends, attach, "case", "fire", backend="nope") == []


async def test_a_copy_target_completes_record_types_then_records(client: Client) -> None:
    copy = prompt("copy_file_between_records")
    assert await values(client, copy, "target", "") == ["case", "contact", "account"]
    assert await values(client, copy, "target", "c") == ["case", "contact"]
    assert await values(client, copy, "target", "acc") == ["account"]
    assert await values(client, copy, "target", "contact alex") == ["contact Alexander Wilson"]
    assert await values(client, copy, "target", "case on fire") == ["case CS-1001"]
    assert await values(client, copy, "target", "account northwind") == []  # accounts cannot be searched


async def test_file_names_come_from_the_source_case_already_chosen(client: Client) -> None:
    copy = prompt("copy_file_between_records")
    case_id = (await client.call_tool("find_records", {"record_type": "case", "query": "CS-1001"})).structured_content[
        "records"
    ][0]["id"]
    listed = await client.call_tool("list_case_files", {"case_id": case_id, "limit": 200})
    names = sorted(file["name"] for file in listed.structured_content["files"])
    assert len(names) >= 5
    assert await values(client, copy, "file_name", "", source_case="CS-1001") == names
    csv = [name for name in names if "csv" in name.casefold()]
    assert csv
    assert await values(client, copy, "file_name", "CSV", source_case="CS-1001") == csv
    assert await values(client, copy, "file_name", "") == []  # no source case chosen yet


async def test_a_failing_crm_gives_no_suggestions_rather_than_an_error(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def unreachable(*_: object, **__: object) -> list[object]:
        raise BackendError("the CRM at crm.example.test did not answer")

    monkeypatch.setattr(LocalBackend, "find_records", unreachable)
    assert await values(client, prompt("review_case_files"), "case", "printer") == []
    assert "did not answer" in caplog.text


async def test_free_text_arguments_get_no_suggestions(client: Client) -> None:
    assert await values(client, prompt("review_case_files"), "focus", "err") == []
    assert await values(client, template(FILE_TEMPLATE), "file_id", "3f") == []


async def test_unknown_prompts_templates_and_arguments_are_invalid_params(client: Client) -> None:
    with pytest.raises(MCPError) as unknown_prompt:
        await values(client, prompt("test_prompt_with_arguments"), "arg1", "x")
    assert unknown_prompt.value.error.code == INVALID_PARAMS
    assert "review_case_files" in unknown_prompt.value.error.message

    with pytest.raises(MCPError) as unknown_argument:
        await values(client, prompt("review_case_files"), "cas", "x")
    assert unknown_argument.value.error.code == INVALID_PARAMS
    assert "case, focus" in unknown_argument.value.error.message

    with pytest.raises(MCPError) as unknown_template:
        await values(client, template("crm://backends"), "backend", "")
    assert unknown_template.value.error.code == INVALID_PARAMS
    assert FILE_TEMPLATE in unknown_template.value.error.message


# ---------------------------------------------------------------------------- titles and descriptions


async def test_every_tool_has_a_title_a_description_and_described_arguments(client: Client) -> None:
    tools = (await client.list_tools()).tools
    assert len(tools) == 8
    for tool in tools:
        assert tool.title and tool.title.strip(), tool.name
        assert tool.description and len(tool.description) > 40, tool.name
        for name, schema in tool.input_schema.get("properties", {}).items():
            assert schema.get("description"), f"{tool.name}.{name} has no description"


async def test_every_resource_and_template_has_a_title_and_description(client: Client) -> None:
    resources = (await client.list_resources()).resources
    templates = (await client.list_resource_templates()).resource_templates
    assert {str(r.uri) for r in resources} == {"crm://backends"}
    assert {t.uri_template for t in templates} == {FILE_TEMPLATE, PHOTO_TEMPLATE}
    for item in [*resources, *templates]:
        assert item.title and item.title.strip(), item.name
        assert item.description and item.description.strip(), item.name


async def test_every_prompt_has_a_title_a_description_and_described_arguments(client: Client) -> None:
    prompts = (await client.list_prompts()).prompts
    assert len(prompts) >= 4
    for listed in prompts:
        assert listed.title and listed.title.strip(), listed.name
        assert listed.description and listed.description.strip(), listed.name
        for argument in listed.arguments or []:
            assert argument.description and argument.description.strip(), f"{listed.name}.{argument.name}"
