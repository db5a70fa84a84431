"""Injection through SOAP bodies: user text in SuperOffice find_records queries and file names reaches
the CRM as literal text — the envelope the simulator received is well-formed XML whose value is
exactly what the user typed, XML specials and `]]>` included.

The OData `$filter` (Creatio, Wello) and EspoCRM `where` equivalents are proven in the vendors'
own test files: tests/backends/test_creatio.py::test_find_escapes_quotes,
tests/backends/test_wello.py::test_find_quotes_user_text and
tests/backends/test_espocrm.py (LIKE wildcards escaped; `where[...]` text stays a value).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from xml.etree import ElementTree as ET

import httpx
import pytest
from mcp import Client

from crm_mcp.config import Settings
from crm_mcp.server import build_server
from tests.helpers import find_one, ok
from tests.simulators.superoffice import SuperOfficeSimulator, contract_simulator

pytestmark = pytest.mark.anyio

HOSTILE = [
    "Wilson</Value><Value>%",
    "a]]>b<![CDATA[c]]>",
    'Tom & Jerry\'s <b>"quote"</b>',
    "&amp;&lt;&#x41;&#0;",
    "x' or '1'='1",
]
HOSTILE_NAMES = ["a&b]]>c.txt", "Tom & Jerry's notes.txt", "&amp;&lt;x.txt", "<![CDATA[x]]>.txt"]


@pytest.fixture
async def superoffice(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[SuperOfficeSimulator, Client]]:
    sim = contract_simulator()
    settings = make_settings(
        f'[backends.so]\nvendor = "superoffice"\nurl = "https://sod.superoffice.test/{sim.tenant}"\n'
        f'username = "{sim.username}"\npassword = "{sim.password}"\n'
    )
    async with Client(build_server(settings, transport=httpx.ASGITransport(app=sim))) as client:
        yield sim, client


def _texts(body: bytes) -> list[str]:
    """Every text node of a received envelope (which must parse: a broken envelope is an injection)."""
    root = ET.fromstring(body)
    return [element.text for element in root.iter() if element.text]


@pytest.mark.parametrize("query", HOSTILE)
@pytest.mark.parametrize("record_type", ["case", "contact"])
async def test_find_query_arrives_as_literal_text(
    superoffice: tuple[SuperOfficeSimulator, Client], record_type: str, query: str
) -> None:
    sim, client = superoffice
    found = await ok(client, "find_records", record_type=record_type, query=query)
    assert found["records"] == []  # nothing matches the literal text; no widened search
    (call,) = sim.calls("GetArchiveListByColumns")[-1:]
    texts = _texts(call.body)
    assert any(query in text for text in texts), texts


@pytest.mark.parametrize("name", HOSTILE_NAMES)
async def test_file_name_arrives_as_literal_text(superoffice: tuple[SuperOfficeSimulator, Client], name: str) -> None:
    sim, client = superoffice
    case_id = await find_one(client, "case", "Printer on fire")
    stored = await ok(client, "upload_attachment", record_id=case_id, file_name=name, content_text="x")
    assert stored["name"] == name
    (call,) = sim.calls("SaveAttachmentEntity")[-1:]
    assert name in _texts(call.body)
    listed = await ok(client, "list_case_files", case_id=case_id, limit=200)
    assert name in [file["name"] for file in listed["files"]]
