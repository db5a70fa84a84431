"""Property: each backend's id validation accepts exactly its id format and refuses the rest clearly,
and through the tools against each vendor's in-process simulator any id gives a result or a clear error."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from crm_mcp.backends.base import require_guid, require_opaque_id
from crm_mcp.backends.espocrm import _require_id as require_espocrm_id
from crm_mcp.backends.superoffice import _require_int as require_superoffice_id
from crm_mcp.config import Settings
from crm_mcp.errors import InvalidInputError
from tests.contract.harnesses import HARNESSES
from tests.helpers import PNG_1x1
from tests.properties.conftest import Served, served
from tests.properties.strategies import NASTY, texts
from tests.properties.test_tool_arguments import assert_clear

MAX_ID_MESSAGE = 400
SHORTENS_LONG_IDS = {"guid", "opaque", "espocrm", "superoffice"}
"""Validators that cut a huge refused id short in their message (base.shown_id): all of them."""

id_texts = st.one_of(
    texts,
    st.sampled_from(NASTY),
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: u.hex),
    st.integers(-(2**40), 2**40).map(str),
    st.text(alphabet="0123456789abcdef", min_size=15, max_size=19),
    st.text(alphabet="0123456789\u0660\u0661\u0665\u00b2", min_size=1, max_size=12),  # digits that are not ASCII
)

VALIDATORS: dict[str, tuple[Callable[[str, str], object], Callable[[str, object], bool]]] = {
    # name: (validator, what an accepted value must look like)
    "guid": (require_guid, lambda raw, out: out == str(uuid.UUID(raw.strip()))),
    "opaque": (require_opaque_id, lambda raw, out: bool(re.fullmatch(r"[A-Za-z0-9._~-]{1,200}", str(out)))),
    # EspoCRM: 17 letters and digits, or a UUID; `_` and `-` after the first character are let through
    # (nothing path- or query-like), at most 36 characters.
    "espocrm": (
        require_espocrm_id,
        lambda raw, out: bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,35}", str(out))) and out == raw.strip(),
    ),
    "superoffice": (require_superoffice_id, lambda raw, out: isinstance(out, int) and 1 <= out <= 2**31 - 1),
}


@pytest.mark.parametrize("name", sorted(VALIDATORS))
@given(value=id_texts)
def test_id_validation_accepts_its_format_or_refuses_clearly(name: str, value: str) -> None:
    validate, well_formed = VALIDATORS[name]
    try:
        accepted = validate(value, "case_id")
    except InvalidInputError as exc:
        event("refused")
        message = str(exc)
        assert message.startswith("case_id ") and "is not a valid id" in message, message
        if name in SHORTENS_LONG_IDS:
            assert len(message) <= MAX_ID_MESSAGE, message[:200]
        return
    event("accepted")
    assert well_formed(value, accepted), (value, accepted)
    # What is accepted can travel in a URL path or a SOAP body without changing its meaning.
    assert not set(str(accepted)) & set("/?#&'\"<>]\\%") and ".." not in str(accepted), accepted


INPROCESS = ["creatio-inprocess", "espocrm-inprocess", "superoffice-inprocess", "wello-task"]
PNG_B64 = base64.b64encode(PNG_1x1).decode()


@pytest.fixture(params=INPROCESS)
def vendor_server(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[tuple[str, Served]]:
    harness = HARNESSES[request.param]
    manager = harness.start(tmp_path)
    started = anyio.run(manager.__aenter__)
    try:
        with served(make_settings(started.toml), started.transport) as server:
            yield harness.backend, server
    finally:
        anyio.run(manager.__aexit__, None, None, None)


def _calls(backend: str, record_id: str) -> dict[str, dict[str, Any]]:
    return {
        "list_case_files": {"case_id": record_id},
        "get_contact_photo": {"contact_id": record_id},
        "read_file": {"resource_uri": f"crm://{backend}/files/{record_id}"},
        "read_photo": {"resource_uri": f"crm://{backend}/contacts/{record_id}/photo"},
        "upload_attachment": {"record_id": record_id, "file_name": "p.txt", "content_text": "property test"},
        "bind_photo": {"contact_id": record_id, "content_base64": PNG_B64, "file_name": "p.png"},
    }


@given(data=st.data())
def test_any_id_through_a_vendor_backend_is_a_result_or_a_clear_error(
    vendor_server: tuple[str, Served], data: st.DataObject
) -> None:
    backend, server = vendor_server
    record_id = data.draw(id_texts, label="id")
    calls = _calls(backend, record_id)
    which = data.draw(st.sampled_from(sorted(calls)), label="call")
    tool = "read_file" if which == "read_photo" else which
    result = server.call(tool, calls[which])
    event(f"{which}: {'refused' if result.is_error else 'succeeded'}")
    assert_clear(tool, calls[which], result)
