"""The last line of defence: secrets and session values cut out of every message that leaves the server.

Each backend keeps its own configured secrets out of the messages it writes. But a CRM (or a proxy
in front of it) whose error page repeats the request hands back what the backend never meant to
quote: session cookies, bearer tokens, tickets, Basic credentials in base64. Every tool error,
resource error and `crm-mcp check` line passes through `Redactor.redact` on its way out, so one
mechanism covers every vendor, including ones added later.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Iterable
from urllib.parse import quote

from pydantic import BaseModel, SecretStr

__all__ = ["REDACTED", "RedactingFilter", "Redactor"]

REDACTED = "[redacted]"
_SENSITIVE_HEADER = re.compile(
    r"(?i)\b(authorization|proxy-authorization|cookie|set-cookie|x-api-key|x-hmac-authorization|"
    r"espo-authorization|bpmcsrf|x-csrf-token|x-xsrf-token)(\s*:\s*)"
    r"(.*?)(?=\s+[A-Za-z][\w-]*:\s|[\r\n]|$)"
)
"""A header as an echoing error page repeats it: the value runs to the next `Name: ` or the line's end."""
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic|digest|hmac)(\s+)[A-Za-z0-9._~+/=:-]{6,}")
_TELLING_NAME = (
    r"(?:\.aspxauth|bpmcsrf|bpmloader|[\w.-]*(?:session|sess|auth|token|ticket|csrf|secret|password|passwd|pwd|"
    r"api[_-]?key|signature|credential)[\w.-]*)"
)
_PAIR = re.compile(rf"(?i)(\b{_TELLING_NAME}\s*=\s*)([^\s;&,\"<>]+)")
"""`name=value` with a telling name: cookies, query strings, forms."""
_JSON_PAIR = re.compile(rf'(?i)("{_TELLING_NAME}"\s*:\s*")([^"]*)')
"""`"name": "value"` with a telling name: a JSON body repeated back."""
_SUPEROFFICE_TICKET = re.compile(r"\b7T:[A-Za-z0-9+/_=-]{8,}")
_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/_-]{12,}={0,2}")


class Redactor:
    """Removes the given secrets (plain, URL-encoded, or inside base64) and anything shaped like a
    credential, cookie, session header or ticket."""

    def __init__(self, secrets: Iterable[str]) -> None:
        plain = {secret for secret in secrets if len(secret) >= 4}
        self._secrets = sorted({*plain, *(quote(secret, safe="") for secret in plain)}, key=len, reverse=True)

    @classmethod
    def for_models(cls, models: Iterable[BaseModel]) -> Redactor:
        """A redactor for every `SecretStr` in these settings (e.g. each backend's table)."""
        return cls(value for model in models for value in _secret_values(model))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        text = _BASE64_TOKEN.sub(self._base64, text)
        text = _SENSITIVE_HEADER.sub(lambda match: f"{match[1]}{match[2]}{REDACTED}", text)
        text = _CREDENTIAL.sub(lambda match: f"{match[1]}{match[2]}{REDACTED}", text)
        text = _PAIR.sub(lambda match: f"{match[1]}{REDACTED}", text)
        text = _JSON_PAIR.sub(lambda match: f"{match[1]}{REDACTED}", text)
        return _SUPEROFFICE_TICKET.sub(REDACTED, text)

    def _base64(self, match: re.Match[str]) -> str:
        token = match[0]
        if not self._secrets:
            return token
        padded = token + "=" * (-len(token) % 4)
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                decoded = decode(padded).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                continue
            if any(secret in decoded for secret in self._secrets):
                return REDACTED
        return token


class RedactingFilter(logging.Filter):
    """Passes every log record through a `Redactor`: its message with the arguments filled in, and
    the traceback of a logged exception (whose messages may quote a CRM's answer). Installed on the
    log handlers once the configuration (and so the secrets) is known."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = self.redactor.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self.redactor.redact(record.stack_info)
        return True


def _secret_values(model: BaseModel) -> Iterable[str]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            yield value.get_secret_value()
        elif isinstance(value, BaseModel):
            yield from _secret_values(value)
