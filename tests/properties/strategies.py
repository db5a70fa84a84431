"""Argument strategies: mostly hostile, partly valid, so both the refusals and the successes are explored.

URLs never name a host that would need DNS or the internet: only loopback, private and link-local
addresses (which must be refused) and strings that are not URLs at all.
"""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import strategies as st

from crm_mcp.backends import _demo as demo

REAL_IDS = [
    demo.CASE_PRINTER_ON_FIRE,
    demo.CASE_INVOICE_VAT,
    demo.CONTACT_ALEXANDER_WILSON,
    demo.CONTACT_JOHN_BEST,
    demo.ACCOUNT_NORTHWIND,
]
NASTY = [
    "",
    " ",
    "..",
    "../../etc/passwd",
    "/etc/passwd",
    "/dev/zero",
    "/dev/stdin",
    "/proc/self/environ",
    "~",
    "~/.ssh/id_rsa",
    "\x00",
    "a\x00b",
    "CON",
    "nul.txt",
    "%2e%2e%2f",
    "'; DROP TABLE files; --",
    "' or 1 eq 1 or '",
    "]]><x/>",
    "<![CDATA[",
    "&amp;&lt;",
    "x&where[1][type]=isNotNull",
    "$filter=true",
    "crm://",
    "crm://local/files/",
    "crm://local/files/../../x",
    "crm://nope/files/abc",
    "crm://local/contacts/x/photo",
    "crm://backends",
    "CS-1001",
    "00000000-0000-0000-0000-000000000000",
    "\u202e\u200b",
    "💥" * 50,
    "a" * 5000,
]
HOSTS = [
    "127.0.0.1",
    "localhost",
    "[::1]",
    "10.1.2.3",
    "192.168.0.1",
    "169.254.169.254",
    "0.0.0.0",
    "[::ffff:127.0.0.1]",
]
SCHEMES = ["http", "https", "ftp", "file", "gopher", "javascript", "data", "crm", "HTTP"]

REAL_URIS = [
    f"crm://local/files/{demo.demo_id('file:CS-1002/invoice-2024-0117.pdf')}",
    f"crm://local/files/{demo.demo_id('file:CS-1002/vat-calculation.csv')}",
    f"crm://local/files/{demo.demo_id('file:CS-1004/toner-order.json')}",
    f"crm://local/contacts/{demo.CONTACT_ALEXANDER_WILSON}/photo",
]

texts = st.text(max_size=300)
ids = st.one_of(st.sampled_from(REAL_IDS), st.sampled_from(NASTY), st.uuids().map(str), texts)
urls = st.one_of(
    st.builds(
        lambda scheme, host, path: f"{scheme}://{host}/{path}", st.sampled_from(SCHEMES), st.sampled_from(HOSTS), texts
    ),
    st.sampled_from(NASTY),
    st.text(alphabet=st.characters(blacklist_characters=":/"), max_size=100),
)
resource_uris = st.one_of(
    st.sampled_from(REAL_URIS),
    st.builds(lambda i: f"crm://local/files/{i}", ids),
    st.builds(lambda i: f"crm://local/contacts/{i}/photo", ids),
    st.builds(lambda b, i: f"crm://{b}/files/{i}", texts, texts),
    st.sampled_from(NASTY),
    texts,
)
base64s = st.one_of(st.binary(max_size=2000).map(lambda b: base64.b64encode(b).decode()), texts)
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    texts,
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
backends = st.one_of(st.just(""), st.just("local"), st.sampled_from(NASTY), texts)
record_types = st.one_of(st.sampled_from(["case", "contact", "account"]), texts)
limits = st.one_of(st.integers(min_value=-5, max_value=250), st.integers())
sources = {
    "path": st.one_of(st.sampled_from(NASTY), texts, st.just("present.txt")),
    "url": urls,
    "resource_uri": resource_uris,
    "content_base64": base64s,
    "content_text": texts,
}

TOOL_ARGUMENTS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "list_case_files": {
        "case_id": ids,
        "limit": limits,
        "cursor": st.one_of(texts, st.sampled_from(NASTY)),
        "backend": backends,
    },
    "get_contact_photo": {"contact_id": ids, "backend": backends},
    "upload_attachment": {
        "record_id": ids,
        "file_name": st.one_of(st.sampled_from(NASTY), texts, st.just("note.txt")),
        "record_type": record_types,
        "mime_type": st.one_of(texts, st.sampled_from(["text/plain", "image/png", "application/x-evil; a=b"])),
        **sources,
        "backend": backends,
    },
    "bind_photo": {
        "contact_id": ids,
        "file_name": st.one_of(st.sampled_from(NASTY), texts, st.just("p.png")),
        "mime_type": st.one_of(texts, st.just("image/png")),
        **sources,
        "backend": backends,
    },
    "find_records": {
        "record_type": record_types,
        "query": st.one_of(texts, st.sampled_from(NASTY)),
        "limit": limits,
        "backend": backends,
    },
    "read_file": {"resource_uri": resource_uris},
    "save_file": {
        "resource_uri": resource_uris,
        "path": st.one_of(st.sampled_from(NASTY), texts),
        "overwrite": st.booleans(),
    },
    "list_backends": {},
}
REQUIRED = {
    "list_case_files": {"case_id"},
    "get_contact_photo": {"contact_id"},
    "upload_attachment": {"record_id", "file_name"},
    "bind_photo": {"contact_id"},
    "find_records": {"record_type", "query"},
    "read_file": {"resource_uri"},
    "save_file": {"resource_uri", "path"},
    "list_backends": set(),
}


_VALID_SOURCES = st.one_of(
    st.fixed_dictionaries({"content_text": texts}),
    st.fixed_dictionaries({"path": st.just("present.txt")}),
    st.fixed_dictionaries({"resource_uri": st.sampled_from(REAL_URIS)}),
)
VALID: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "list_case_files": st.fixed_dictionaries(
        {"case_id": st.sampled_from(REAL_IDS)}, optional={"limit": st.integers(1, 200)}
    ),
    "get_contact_photo": st.fixed_dictionaries({"contact_id": st.sampled_from(REAL_IDS)}),
    "upload_attachment": st.builds(
        lambda base, source: base | source,
        st.fixed_dictionaries(
            {"record_id": st.sampled_from(REAL_IDS), "file_name": st.sampled_from(["note.txt", "a b.csv", "x.png"])},
            optional={"record_type": st.sampled_from(["case", "contact", "account"])},
        ),
        _VALID_SOURCES,
    ),
    "bind_photo": st.fixed_dictionaries(
        {"contact_id": st.sampled_from(REAL_IDS), "resource_uri": st.sampled_from(REAL_URIS)}
    ),
    "find_records": st.fixed_dictionaries(
        {
            "record_type": st.sampled_from(["case", "contact"]),
            "query": st.sampled_from(["Printer", "Alexander", "CS-1002", "a"]),
        }
    ),
    "read_file": st.fixed_dictionaries({"resource_uri": st.sampled_from(REAL_URIS)}),
    "save_file": st.fixed_dictionaries(
        {"resource_uri": st.sampled_from(REAL_URIS), "path": st.sampled_from(["", ".", "out.bin", "copy.pdf"])},
        optional={"overwrite": st.booleans()},
    ),
    "list_backends": st.just({}),
}


@st.composite
def arguments_for(draw: st.DrawFn, tool: str) -> dict[str, Any]:
    """A third of the time valid arguments with one value swapped for a hostile one (so the checks
    deep inside a tool are reached); otherwise each argument drawn at random: required ones usually
    present, optional ones sometimes, now and then a wrong type, a missing argument or an unknown key."""
    fields = TOOL_ARGUMENTS[tool]
    if fields and draw(st.integers(0, 2)) == 0:
        chosen = dict(draw(VALID[tool]))
        if draw(st.booleans()):
            name = draw(st.sampled_from(sorted(fields)))
            chosen[name] = draw(fields[name])
        return chosen
    chosen = {}
    for name, strategy in fields.items():
        present = draw(st.booleans()) if name not in REQUIRED[tool] else draw(st.integers(0, 9)) > 0
        if not present:
            continue
        chosen[name] = draw(anything) if draw(st.integers(0, 9)) == 0 else draw(strategy)
    if draw(st.integers(0, 14)) == 0:
        chosen[draw(st.sampled_from(["limt", "id", "file", "x"]))] = draw(anything)
    return chosen
