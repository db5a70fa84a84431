"""One small error hierarchy for everything crm-mcp refuses or fails at.

Every message is written for the model (or person) that reads the tool error: it says what went
wrong and what to do next. Messages never carry secrets.

    CrmError
    ├── ConfigError              the configuration file or environment is wrong (startup, `crm-mcp check`)
    ├── InvalidInputError        an argument is malformed: bad id, bad cursor, zero or two sources, ...
    │   └── AccessDeniedError    a local path or URL is outside what this server may touch
    ├── NotFoundError            the case, contact, file or backend does not exist
    ├── UnsupportedError         the backend cannot do this (e.g. no accounts in this CRM)
    ├── TooLargeError            a transfer is over `limits.max_transfer_bytes` (or another limit)
    ├── ConflictError            the CRM refused because the record changed or already exists
    └── BackendError             the CRM failed or refused for another reason
        ├── AuthenticationError  the CRM rejected our credentials
        └── PermissionDeniedError  the CRM user lacks the right to do this

At the MCP boundary (`server.py`) a `CrmError` becomes a tool error (`isError: true`) or, for
`resources/read`, a JSON-RPC error (`NotFoundError` → -32602, the rest → -32603).
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "AuthenticationError",
    "BackendError",
    "ConfigError",
    "ConflictError",
    "CrmError",
    "InvalidInputError",
    "NotFoundError",
    "PermissionDeniedError",
    "TooLargeError",
    "UnsupportedError",
]


class CrmError(Exception):
    """Base class: a failure with a message that is safe and useful to show to the caller."""


class ConfigError(CrmError):
    """The configuration is invalid; the message names the file, the backend and the key."""


class InvalidInputError(CrmError):
    """An argument is malformed; the message says which and what a valid one looks like."""


class AccessDeniedError(InvalidInputError):
    """A path or URL points outside what this server is allowed to read or write."""


class NotFoundError(CrmError):
    """The record, file or backend does not exist."""


class UnsupportedError(CrmError):
    """The backend cannot do what was asked (record type, photos, ...)."""


class TooLargeError(CrmError):
    """A payload is larger than the configured limit."""


class ConflictError(CrmError):
    """The CRM refused the change because of the record's current state."""


class BackendError(CrmError):
    """The CRM failed, timed out or refused the request."""


class AuthenticationError(BackendError):
    """The CRM rejected the configured credentials."""


class PermissionDeniedError(BackendError):
    """The CRM user is not allowed to do this."""
