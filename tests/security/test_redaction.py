"""The shared redactor every outgoing error message passes through (crm_mcp/redaction.py)."""

from __future__ import annotations

import base64
import io
import logging

import pytest
from pydantic import BaseModel, SecretStr

from crm_mcp.redaction import REDACTED, RedactingFilter, Redactor

SECRET = "pw-Q7x9Zk2Lm"
redactor = Redactor([SECRET])


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        (f"login failed for {SECRET}", SECRET),
        ("authorization: Basic " + base64.b64encode(f"u:{SECRET}".encode()).decode(), "dTp"),
        ("GET /x host: crm.test cookie: .ASPXAUTH=abc123; BPMCSRF=def456 user-agent: x", "abc123"),
        ("GET /x host: crm.test cookie: .ASPXAUTH=abc123; BPMCSRF=def456 user-agent: x", "def456"),
        ("authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "eyJhbGci"),
        ("GET /f?X-Amz-Signature=0a1b2c3d4e&x=1", "0a1b2c3d4e"),
        ('{"UserName": "u", "UserPassword": "hunter22"}', "hunter22"),
        ("<Credentials><Ticket>7T:AbCdEfGhIjKlMnOp</Ticket></Credentials>", "7T:AbCdEf"),
        ("set-cookie: SESSION=zzz999; Path=/", "zzz999"),
    ],
)
def test_secrets_and_session_values_are_cut(text: str, gone: str) -> None:
    redacted = redactor.redact(text)
    assert gone not in redacted
    assert REDACTED in redacted


@pytest.mark.parametrize(
    "message",
    [
        "case 6f1c2a4e-0000-4000-8000-000000000000 was not found on backend 'creatio' (Creatio)",
        "Creatio's identity service refused the OAuth client 'crm-mcp-client' (HTTP 401); check token_url, "
        "client_id and client_secret in [backends.creatio]",
        "SuperOffice failed (HTTP 500) while trying to look up ticket 1001",
        "cursor is not one this backend issued for this case (copy it exactly from next_cursor)",
        "file_id 'att-5004' is not a valid id: SuperOffice file ids look like 'att-123'",
        "'report.pdf' is 12,345 bytes, over this server's transfer limit of 10,000 bytes (limits.max_transfer_bytes)",
    ],
)
def test_ordinary_messages_pass_unchanged(message: str) -> None:
    assert redactor.redact(message) == message


def test_a_url_encoded_secret_is_cut() -> None:
    assert Redactor(["s3cret:pass@word"]).redact("POST /login u=api&p=s3cret%3Apass%40word") == (
        f"POST /login u=api&p={REDACTED}"
    )


def test_secrets_are_found_in_settings_models() -> None:
    class Inner(BaseModel):
        token: SecretStr

    class Table(BaseModel):
        vendor: str
        password: SecretStr
        inner: Inner

    found = Redactor.for_models(
        [Table(vendor="x", password=SecretStr("aa-secret-1"), inner=Inner(token="bb-secret-2"))]
    )
    assert found.redact("aa-secret-1 and bb-secret-2 and x") == f"{REDACTED} and {REDACTED} and x"


def test_log_records_and_their_tracebacks_are_redacted() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(Redactor(["hunter2-secret"])))
    log = logging.getLogger("tests.redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("login as %s with %s failed", "jane", "hunter2-secret")
        try:
            raise ValueError("the CRM answered: Cookie: .ASPXAUTH=abc123def456; password=hunter2-secret")
        except ValueError:
            log.exception("unexpected")
    finally:
        log.removeHandler(handler)
    output = stream.getvalue()
    assert "login as jane with [redacted] failed" in output
    assert "Traceback" in output and "ValueError" in output  # the traceback is kept, only cleaned
    assert "hunter2" not in output
    assert "abc123def456" not in output
