"""Stream helpers shared by the vendor backends.

- `base64_encoded` for APIs that want file bytes as base64 text (EspoCRM's data URLs, Wello's
  `file_content`, SuperOffice's `base64Binary`). Encoding on the fly keeps a large upload out of
  memory: whole 3-byte groups are encoded as chunks arrive and the remainder is carried to the next
  chunk, so the concatenated pieces are exactly the base64 of the whole file.
- `checked_upload`: an upload's chunks as a request body, stopped the moment they pass the transfer
  limit or the size the source announced, and failed at the end if the source came up short — so a
  cut or lying source fails the request instead of becoming a wrong file in the CRM.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

from crm_mcp.backends.base import Upload
from crm_mcp.errors import BackendError, TooLargeError

__all__ = ["BASE64_PIECE", "base64_encoded", "base64_length", "checked_upload"]

BASE64_PIECE = 192 * 1024
"""Raw bytes encoded per yielded piece (a multiple of 3)."""


async def base64_encoded(chunks: AsyncIterator[bytes], piece: int = BASE64_PIECE) -> AsyncIterator[bytes]:
    """The base64 text of everything `chunks` yields, in pieces of at most `piece` raw bytes."""
    if piece % 3:
        raise ValueError("piece must be a multiple of 3")
    carry = b""
    async for chunk in chunks:
        data = carry + chunk if carry else chunk
        cut = len(data) - len(data) % 3
        carry = data[cut:]
        for start in range(0, cut, piece):
            yield base64.b64encode(data[start : min(start + piece, cut)])
    if carry:
        yield base64.b64encode(carry)


def base64_length(size: int) -> int:
    """Length of the base64 text of `size` bytes (with padding): what a Content-Length must count."""
    return 4 * ((size + 2) // 3)


async def checked_upload(upload: Upload, limit: int) -> AsyncIterator[bytes]:
    """`upload`'s chunks, checked against `limit` (`limits.max_transfer_bytes`) and its announced size."""
    sent = 0
    async for chunk in upload.chunks:
        sent += len(chunk)
        if sent > limit:
            raise TooLargeError(
                f"{upload.name!r} grew past this server's transfer limit of {limit:,} bytes (limits.max_transfer_bytes)"
            )
        if sent > upload.size:
            raise BackendError(f"the source of {upload.name!r} sent more than the {upload.size:,} bytes it announced")
        yield chunk
    if sent != upload.size:
        raise BackendError(f"the source of {upload.name!r} ended after {sent:,} of {upload.size:,} bytes (truncated)")
