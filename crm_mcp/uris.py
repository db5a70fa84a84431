"""The `crm://` URIs this server hands out and reads back.

crm://{backend}/files/{file_id}              an attachment's bytes
crm://{backend}/contacts/{contact_id}/photo  a contact's photo
crm://backends                               the configured backends (JSON)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from crm_mcp.errors import InvalidInputError

__all__ = ["BACKENDS_URI", "FILE_TEMPLATE", "PHOTO_TEMPLATE", "CrmRef", "file_uri", "parse_crm_uri", "photo_uri"]

BACKENDS_URI = "crm://backends"
FILE_TEMPLATE = "crm://{backend}/files/{file_id}"
PHOTO_TEMPLATE = "crm://{backend}/contacts/{contact_id}/photo"

_SEGMENT = r"[A-Za-z0-9._~-]+"
_FILE = re.compile(rf"^crm://(?P<backend>{_SEGMENT})/files/(?P<id>{_SEGMENT})$")
_PHOTO = re.compile(rf"^crm://(?P<backend>{_SEGMENT})/contacts/(?P<id>{_SEGMENT})/photo$")


@dataclass(frozen=True)
class CrmRef:
    """A parsed file or photo URI."""

    backend: str
    kind: str
    """"file" or "photo"."""
    id: str


def file_uri(backend: str, file_id: str) -> str:
    return f"crm://{backend}/files/{file_id}"


def photo_uri(backend: str, contact_id: str) -> str:
    return f"crm://{backend}/contacts/{contact_id}/photo"


def parse_crm_uri(uri: str) -> CrmRef:
    """Parse a file or photo URI; `InvalidInputError` that shows the accepted forms otherwise."""
    value = uri.strip()
    if match := _FILE.match(value):
        return CrmRef(match["backend"], "file", match["id"])
    if match := _PHOTO.match(value):
        return CrmRef(match["backend"], "photo", match["id"])
    raise InvalidInputError(
        f"{uri!r} is not a file URI of this server: expected crm://<backend>/files/<file_id> (from "
        "list_case_files or upload_attachment) or crm://<backend>/contacts/<contact_id>/photo"
    )
