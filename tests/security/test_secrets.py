"""No secret ever reaches a client or a log: every vendor backend configured with known, distinctive
secrets, every tool and the main error paths run, and all output scanned for each secret, plainly
and in base64.

Error paths: wrong credentials, a CRM whose error pages echo the whole request (headers included,
as some proxies' and debug pages do) with a session cookie, records that do not exist, malformed
ids and expired sessions. Output scanned: tool results (text, structured content, every block),
resources, resource listings, and every log record at DEBUG. The `check` command and the HTTP
transport's logs are scanned by their own tests (test_check_output.py, test_http_transport.py).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from mcp import Client

from crm_mcp.cli import _quiet_http_libraries
from crm_mcp.config import Settings
from crm_mcp.server import build_server
from tests.helpers import PNG_1x1, text_of
from tests.security.leaks import find_leaks
from tests.simulators import creatio, espocrm, superoffice, wello

pytestmark = pytest.mark.anyio

SECRETS = {
    "creatio_password": "crt-pw-Q7x9Zk2Lm",
    "creatio_client_secret": "crt-cs-M4n8Vb1Xz",
    "espocrm_api_key": "esp-key-R5t6Yh3Df",
    "espocrm_hmac_secret": "esp-hmac-P2o3Iu4Gh",
    "espocrm_password": "esp-pw-L9k8Jh7Sa",
    "superoffice_password": "so-pw-W1e2Rt5Qp",
    "superoffice_application_token": "so-app-Z3x4Cv6Bn",
    "wello_password": "wel-pw-B7n8Mq9Ty",
    "wrong_password": "bad-pw-U6i7Op8Kj",
}
COOKIE = "echo-cookie-Hs5Jd6Kf"
"""The session cookie the echoing CRM sets."""
MISSING_GUID = "6f1c2a4e-0000-4000-8000-000000000000"
RETRIES_OFF = "retries = { attempts = 1 }\n"
SCANS: list[int] = []
"""(output, secret) pairs checked per test, for the README's figures (`-s` prints the total)."""


class Echoing(httpx.AsyncBaseTransport):
    """Passes requests to the simulator, or, while `status` is set, answers them itself with an
    error page that repeats the request line, every header and the body, and sets a cookie."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.status: int | None = None
        self.sent: list[str] = []
        self.echoed: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = (await request.aread()).decode("utf-8", "replace")
        headers = "".join(f"{key}: {value}\n" for key, value in request.headers.items())
        page = f"{request.method} {request.url}\n{headers}\n{body}"
        self.sent.append(page)
        if self.status is None:
            return await self.inner.handle_async_request(request)
        self.echoed.append(page)
        return httpx.Response(
            self.status,
            headers={"content-type": "text/plain", "set-cookie": f"SESSION={COOKIE}; Path=/"},
            content=page.encode(),
        )


@dataclass
class Crm:
    """One vendor backend with known secrets over its in-process simulator."""

    backend: str
    toml: str
    transport: Echoing
    missing_id: str
    malformed_id: str
    expire: Callable[[], None]
    issued: Callable[[], set[str]]
    """Session values the simulator handed out so far (cookies, tokens, tickets): secrets too."""
    wire_secrets: list[str] = field(default_factory=list)
    """Configured secrets that travel in requests (the echo must have carried them)."""


def _creatio(auth: str) -> Crm:
    sim = creatio.contract_simulator(
        password=SECRETS["creatio_password"], client_secret=SECRETS["creatio_client_secret"]
    )
    if auth == "forms":
        keys = f'auth = "forms"\nusername = "{sim.username}"\npassword = "{SECRETS["creatio_password"]}"\n'
        wire = [SECRETS["creatio_password"]]
    else:
        keys = (
            'auth = "oauth"\ntoken_url = "https://creatio-is.test/connect/token"\n'
            f'client_id = "{sim.client_id}"\nclient_secret = "{SECRETS["creatio_client_secret"]}"\n'
        )
        wire = [SECRETS["creatio_client_secret"]]
    return Crm(
        backend="creatio",
        toml=f'[backends.creatio]\nvendor = "creatio"\nurl = "https://creatio.test"\n{keys}{RETRIES_OFF}',
        transport=Echoing(httpx.ASGITransport(app=sim)),
        missing_id=MISSING_GUID,
        malformed_id="CS-1001",
        expire=sim.expire_sessions,
        issued=lambda: {*sim.sessions, *sim.sessions.values(), *sim.tokens},
        wire_secrets=wire,
    )


def _espocrm(auth: str) -> Crm:
    sim = espocrm.seeded_simulator((9, 1) if auth == "hmac" else (8, 4))
    if auth == "api_key":
        sim.add_user(espocrm.SimUser("sec-api", auth_method="ApiKey", api_key=SECRETS["espocrm_api_key"]))
        keys = f'api_key = "{SECRETS["espocrm_api_key"]}"\n'
        wire = [SECRETS["espocrm_api_key"]]
    elif auth == "hmac":
        sim.add_user(
            espocrm.SimUser(
                "sec-hmac",
                auth_method="Hmac",
                api_key=SECRETS["espocrm_api_key"] + "-h",
                secret_key=SECRETS["espocrm_hmac_secret"],
            )
        )
        keys = f'api_key = "{SECRETS["espocrm_api_key"]}-h"\nsecret_key = "{SECRETS["espocrm_hmac_secret"]}"\n'
        wire = [SECRETS["espocrm_api_key"] + "-h"]  # the HMAC secret itself never travels
    else:
        sim.add_user(
            espocrm.SimUser("sec-jane", type="regular", auth_method=None, password=SECRETS["espocrm_password"])
        )
        keys = f'username = "sec-jane"\npassword = "{SECRETS["espocrm_password"]}"\n'
        wire = [SECRETS["espocrm_password"]]
    return Crm(
        backend="espo",
        toml=f'[backends.espo]\nvendor = "espocrm"\nurl = "http://espo.test"\n{keys}contact_photo_field = "cPhoto"\n'
        + RETRIES_OFF,
        transport=Echoing(httpx.ASGITransport(app=sim)),
        missing_id="0123456789abcdef0",
        malformed_id="../etc",
        expire=lambda: None,  # EspoCRM authenticates every request: no session to expire
        issued=set,
        wire_secrets=wire,
    )


def _superoffice() -> Crm:
    sim = superoffice.contract_simulator(
        password=SECRETS["superoffice_password"], application_token=SECRETS["superoffice_application_token"]
    )
    keys = (
        f'username = "{sim.username}"\npassword = "{SECRETS["superoffice_password"]}"\n'
        f'application_token = "{SECRETS["superoffice_application_token"]}"\n'
    )
    return Crm(
        backend="so",
        toml=f'[backends.so]\nvendor = "superoffice"\nurl = "https://sod.superoffice.test/{sim.tenant}"\n{keys}'
        + RETRIES_OFF,
        transport=Echoing(httpx.ASGITransport(app=sim)),
        missing_id="999999",
        malformed_id="abc",
        expire=sim.expire_tickets,
        issued=lambda: set(sim.tickets),
        wire_secrets=[SECRETS["superoffice_password"], SECRETS["superoffice_application_token"]],
    )


def _wello() -> Crm:
    sim = wello.WelloSimulator(password=SECRETS["wello_password"]).seed()
    keys = f'username = "{sim.username}"\npassword = "{SECRETS["wello_password"]}"\ndomain = "{sim.domain}"\n'
    return Crm(
        backend="wello",
        toml=f'[backends.wello]\nvendor = "wello"\nurl = "http://wello.test"\n{keys}{RETRIES_OFF}',
        transport=Echoing(httpx.ASGITransport(app=sim)),
        missing_id=MISSING_GUID,
        malformed_id="JOB-1",
        expire=lambda: None,  # Basic authentication on every request: no session
        issued=set,
        wire_secrets=[SECRETS["wello_password"]],
    )


CRMS: dict[str, Callable[[], Crm]] = {
    "creatio-forms": lambda: _creatio("forms"),
    "creatio-oauth": lambda: _creatio("oauth"),
    "espocrm-api-key": lambda: _espocrm("api_key"),
    "espocrm-hmac": lambda: _espocrm("hmac"),
    "espocrm-basic": lambda: _espocrm("basic"),
    "superoffice": _superoffice,
    "wello": _wello,
}


@dataclass
class Scan:
    """Everything a client or an operator could see, collected as text."""

    outputs: list[tuple[str, str]] = field(default_factory=list)

    def add(self, what: str, value: Any) -> Any:
        dump = value.model_dump_json() if hasattr(value, "model_dump_json") else repr(value)
        self.outputs.append((what, dump))
        return value


@asynccontextmanager
async def _connected(crm: Crm, make_settings: Callable[..., Settings]) -> AsyncIterator[Client]:
    async with Client(build_server(make_settings(crm.toml), transport=crm.transport)) as client:
        yield client


async def _exercise(client: Client, crm: Crm, scan: Scan, issued: set[str]) -> None:
    """Every tool, the resources, and the error paths, on one backend."""

    async def call(tool: str, **arguments: Any) -> Any:
        return scan.add(f"{tool} {arguments}", await client.call_tool(tool, arguments))

    async def read(uri: str) -> None:
        try:
            scan.add(f"read {uri}", await client.read_resource(uri))
        except Exception as exc:  # an MCP error answer: its message is output too
            scan.add(f"read {uri} error", str(exc))

    scan.add("resources/list", await client.list_resources())
    scan.add("resources/templates/list", await client.list_resource_templates())
    await read("crm://backends")
    await call("list_backends")
    cases = await call("find_records", record_type="case", query="Printer on fire")
    contacts = await call("find_records", record_type="contact", query="Alexander Wilson")
    assert not cases.is_error and not contacts.is_error, text_of(cases) + text_of(contacts)
    case_id = cases.structured_content["records"][0]["id"]
    contact_id = contacts.structured_content["records"][0]["id"]
    listing = await call("list_case_files", case_id=case_id)
    assert not listing.is_error, text_of(listing)
    uri = next(file["resource_uri"] for file in listing.structured_content["files"] if file["resource_uri"])
    await call("get_contact_photo", contact_id=contact_id)
    await call("read_file", resource_uri=uri)
    await read(uri)
    await call("save_file", resource_uri=uri, path="saved.bin", overwrite=True)
    upload = await call("upload_attachment", record_id=case_id, file_name="leak-check.txt", content_text="hello")
    assert not upload.is_error, text_of(upload)
    await call("bind_photo", contact_id=contact_id, content_base64=base64.b64encode(PNG_1x1).decode())
    issued |= crm.issued()

    # Not found and malformed ids.
    await call("list_case_files", case_id=crm.missing_id)
    await call("list_case_files", case_id=crm.malformed_id)
    await call("get_contact_photo", contact_id=crm.missing_id)
    await call("read_file", resource_uri=f"crm://{crm.backend}/files/{crm.missing_id}")
    await call("upload_attachment", record_id=crm.missing_id, file_name="x.txt", content_text="x")
    await call("list_case_files", case_id=case_id, cursor="not-a-cursor")

    # An expired session, recovered from on a read.
    issued |= crm.issued()
    crm.expire()
    again = await call("list_case_files", case_id=case_id)
    assert not again.is_error, text_of(again)
    issued |= crm.issued()

    # A CRM whose error pages echo the request, as a server error and as a refusal of credentials.
    for status in (500, 401, 403, 404):
        crm.transport.status = status
        await call("find_records", record_type="case", query="Printer on fire")
        await call("list_case_files", case_id=case_id)
        await call("get_contact_photo", contact_id=contact_id)
        await call("upload_attachment", record_id=case_id, file_name="echo.txt", content_text="x")
        await call("bind_photo", contact_id=contact_id, content_base64=base64.b64encode(PNG_1x1).decode())
        await read(uri)
        crm.transport.status = None
        issued |= crm.issued()


def _assert_no_leaks(scan: Scan, secrets: set[str]) -> int:
    leaks = [(what, found) for what, text in scan.outputs if (found := find_leaks(text, secrets))]
    assert leaks == [], leaks
    return len(scan.outputs)


@pytest.mark.parametrize("name", sorted(CRMS))
async def test_no_secret_in_any_tool_result_resource_error_or_log(
    name: str, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    _quiet_http_libraries()  # as `crm-mcp` does at startup, whatever --log-level says
    caplog.set_level(logging.DEBUG)
    crm = CRMS[name]()
    scan = Scan()
    issued: set[str] = set()
    async with _connected(crm, make_settings) as client:
        await _exercise(client, crm, scan, issued)
    scan.outputs.append(("log at DEBUG", caplog.text))
    secrets = {*SECRETS.values(), COOKIE, *issued}
    # The scan means something only if the secrets were really sent and the echo really repeated some.
    for secret in crm.wire_secrets:
        assert any(find_leaks(page, [secret]) for page in crm.transport.sent), f"{secret} never reached the CRM"
    assert any(find_leaks(page, secrets) for page in crm.transport.echoed), "no echoed page carried a secret"
    if name.startswith(("creatio", "superoffice")):
        assert issued, "the simulator issued no session values to look for"
    SCANS.append(_assert_no_leaks(scan, secrets) * len(secrets))


@pytest.mark.parametrize("name", sorted(CRMS))
async def test_wrong_credentials_are_refused_without_showing_them(
    name: str, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    _quiet_http_libraries()
    caplog.set_level(logging.DEBUG)
    crm = CRMS[name]()
    for secret in [*crm.wire_secrets, SECRETS["espocrm_hmac_secret"]]:
        crm.toml = crm.toml.replace(secret, SECRETS["wrong_password"])
    scan = Scan()
    async with _connected(crm, make_settings) as client:
        for arguments in ({"record_type": "case", "query": "Printer"}, {"record_type": "contact", "query": "Wilson"}):
            result = scan.add("find_records", await client.call_tool("find_records", arguments))
            assert result.is_error
            assert any(
                word in text_of(result).lower()
                for word in (
                    "credential",
                    "password",
                    "key",
                    "token",
                    "secret",
                    "login",
                    "log in",
                    "authenticat",
                    "rejected",
                )
            ), text_of(result)
        scan.add(
            "upload",
            await client.call_tool(
                "upload_attachment", {"record_id": crm.missing_id, "file_name": "a.txt", "content_text": "a"}
            ),
        )
    scan.outputs.append(("log at DEBUG", caplog.text))
    SCANS.append(_assert_no_leaks(scan, {*SECRETS.values(), COOKIE}) * (len(SECRETS) + 1))
