"""Property: whatever arguments a client sends to any tool, the answer is a result or a clear tool error.

Never an unhandled exception, a traceback, the SDK's bare "Error executing tool" or our own
"unexpected error" fallback (which means a bug slipped through); a refusal names what was wrong.
Runs on the local backend with its demo data, through the in-memory MCP client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tests.helpers import text_of
from tests.properties.conftest import Served
from tests.properties.strategies import TOOL_ARGUMENTS, arguments_for

MAX_MESSAGE = 1500
"""A refusal is a sentence or two; longer means it echoes a large input back at the model."""
SUBJECTS = (
    "argument", "backend", "id", "source", "file", "path", "url", "uri", "cursor", "query", "limit", "record",
    "contact", "case", "base64", "name", "mime", "photo", "image", "read-only", "folder", "host", "address",
)  # fmt: skip


def assert_clear(tool: str, arguments: dict[str, Any], result: Any) -> None:
    """The property every tool answer must have (see the module docstring)."""
    if not result.is_error:
        assert result.structured_content is not None, (tool, arguments)
        return
    message = text_of(result).strip()
    assert message, (tool, arguments)
    assert "Traceback" not in message, message
    assert not message.startswith("Error executing tool"), message
    assert "unexpected error" not in message, (tool, arguments, message)
    assert len(message) <= MAX_MESSAGE, (tool, len(message), message[:300])
    lowered = message.lower()
    assert any(subject in lowered for subject in (*SUBJECTS, *TOOL_ARGUMENTS[tool])), message


@pytest.fixture
def present_file(files_root: Path) -> None:
    """A real file inside files.roots, so `path` sources sometimes succeed."""
    (files_root / "present.txt").write_text("present\n")


@pytest.mark.usefixtures("present_file")
@pytest.mark.parametrize("tool", sorted(TOOL_ARGUMENTS))
@given(data=st.data())
def test_every_answer_is_a_result_or_a_clear_tool_error(local_server: Served, tool: str, data: st.DataObject) -> None:
    arguments = data.draw(arguments_for(tool), label="arguments")
    result = local_server.call(tool, arguments)
    event("refused" if result.is_error else "succeeded")  # the split shows with --hypothesis-show-statistics
    assert_clear(tool, arguments, result)
