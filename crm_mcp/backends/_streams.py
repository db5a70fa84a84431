"""Stream helpers shared by the vendor backends.

- `base64_encoded` for APIs that want file bytes as base64 text (EspoCRM's data URLs, Wello's
  `file_content`, SuperOffice's `base64Binary`). Encoding on the fly keeps a large upload out of
  memory: whole 3-byte groups are encoded as chunks arrive and the remainder is carried to the next
  chunk, so the concatenated pieces are exactly the base64 of the whole file.
- `Base64Decoder`, the other way round, for APIs that send file bytes as base64 text inside a
  response body (SuperOffice's SOAP, Wello's JSON): text is decoded as it streams in, carrying at
  most 3 characters between pieces, so memory stays bounded whatever the file's size.
- `checked_upload`: an upload's chunks as a request body, stopped the moment they pass the transfer
  limit or the size the source announced, and failed at the end if the source came up short — so a
  cut or lying source fails the request instead of becoming a wrong file in the CRM.
- `checked_download`, the same guarantee the other way round: a download's chunks, refused at the
  chunk that passes the transfer limit or the size the CRM announced (the rest is never read), and
  failed at the end if the body came up short — so a cut answer is an error, never a short file.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from crm_mcp.backends.base import Upload
from crm_mcp.errors import BackendError, TooLargeError

__all__ = [
    "BASE64_PIECE",
    "Base64Decoder",
    "Base64Error",
    "base64_encoded",
    "base64_length",
    "checked_download",
    "checked_upload",
]

BASE64_PIECE = 192 * 1024
"""Raw bytes encoded per yielded piece (a multiple of 3)."""

try:  # pybase64 (SIMD, a dependency) decodes ~1.4 GB/s where binascii manages ~250 MB/s
    from pybase64 import b64decode as _simd_b64decode
    from pybase64 import b64encode as _b2a
except ImportError:  # pragma: no cover - an install that left it out still works, more slowly
    _simd_b64decode = None
    _b2a = base64.b64encode


async def base64_encoded(chunks: AsyncIterator[bytes], piece: int = BASE64_PIECE) -> AsyncIterator[bytes]:
    """The base64 text of everything `chunks` yields, in pieces of at most `piece` raw bytes."""
    if piece % 3:
        raise ValueError("piece must be a multiple of 3")
    carry = b""
    async for chunk in chunks:
        data = carry + chunk if carry else chunk
        cut = len(data) - len(data) % 3
        carry = bytes(data[cut:])
        view = memoryview(data)  # slices of a view are not copies of the chunk
        for start in range(0, cut, piece):
            yield _b2a(view[start : min(start + piece, cut)])
    if carry:
        yield _b2a(carry)


def base64_length(size: int) -> int:
    """Length of the base64 text of `size` bytes (with padding): what a Content-Length must count."""
    return 4 * ((size + 2) // 3)


class Base64Error(ValueError):
    """Text that is not valid base64; the message says what was wrong and how far decoding got."""


def _a2b(data: bytes | bytearray | memoryview) -> bytes:
    """Strictly decode whole 4-character groups. pybase64 is used when installed; whenever it refuses
    the text, binascii decides (and says precisely why), so both give the same bytes and errors."""
    if _simd_b64decode is not None:
        try:
            return _simd_b64decode(data, validate=True)
        except binascii.Error:
            pass
    return binascii.a2b_base64(data, strict_mode=True)


_PAD = 0x3D  # "="
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


class Base64Decoder:
    """Decodes base64 text fed in pieces of any size, split anywhere.

    Why not `base64.b64decode` per piece: pieces are not 4-character aligned, and decoding costs more
    CPU than anything else on a download (CPython decodes ~250 MB/s), so each piece is decoded by one
    call (binascii's, or pybase64's when installed) over its whole 4-aligned part, with no copy of the
    text except when a remainder (< 4 characters) from the previous piece must be put in front. Strict
    decoding rejects every character outside the alphabet and padding anywhere but at the end (across
    pieces too): invalid text is an error, never different bytes.

    `whitespace` lists the bytes that may separate characters (SOAP's base64Binary allows line breaks
    and spaces). A piece is first decoded as it is; only when that fails is whitespace deleted (one
    `bytes.translate`) and the piece decoded again, so text without whitespace pays nothing for it.
    """

    def __init__(self, *, whitespace: bytes = b"") -> None:
        self._whitespace = whitespace
        self._carry = b""
        self._padded = False
        self.decoded = 0
        """File bytes produced so far."""

    def feed(self, text: bytes | bytearray | memoryview | str) -> bytes:
        """Decode the next piece; returns the bytes of every whole 4-character group seen so far."""
        data = _ascii(text) if isinstance(text, str) else text
        if not len(data):
            return b""
        if self._carry:
            data, self._carry = self._carry + data, b""
        try:
            return self._decode(data)
        except binascii.Error as exc:
            if self._whitespace:
                stripped = bytes(data).translate(None, self._whitespace)
                if len(stripped) != len(data):
                    return self._checked(stripped)
            raise self._error(str(exc)) from None

    def finish(self, *, pad: bool = False) -> bytes:
        """Decode what is left at the end of the text. With `pad`, a last group without its `=`
        padding is accepted (as JSON producers may send it); otherwise it is an error."""
        carry, self._carry = self._carry.translate(None, self._whitespace), b""
        if not carry:
            return b""
        if carry.translate(None, _ALPHABET):
            raise self._error("Only base64 data is allowed")
        if not pad or len(carry) == 1:
            raise self._error(
                f"the text ends with {len(carry)} character(s) of an incomplete 4-character group (truncated?)"
            )
        return self._checked(carry + b"=" * (4 - len(carry)))

    def _checked(self, data: bytes | bytearray | memoryview) -> bytes:
        try:
            return self._decode(data)
        except binascii.Error as exc:
            raise self._error(str(exc)) from None

    def _decode(self, data: bytes | bytearray | memoryview) -> bytes:
        if not len(data):
            return b""
        if self._padded:
            raise binascii.Error("Excess data after padding")
        cut = len(data) - len(data) % 4
        if cut == len(data):
            out = _a2b(data)
        else:
            out = _a2b(memoryview(data)[:cut])
            self._carry = bytes(data[cut:])
        if cut and data[cut - 1] == _PAD:
            self._padded = True
        self.decoded += len(out)
        return out

    def _error(self, reason: str) -> Base64Error:
        return Base64Error(f"not valid base64 after {self.decoded:,} decoded bytes: {reason}")


def _ascii(text: str) -> bytes:
    try:
        return text.encode("ascii")
    except UnicodeEncodeError as exc:
        raise Base64Error(f"not valid base64: it contains the non-ASCII character {exc.object[exc.start]!r}") from None


async def checked_upload(upload: Upload, limit: int, *, outcome: str = "") -> AsyncIterator[bytes]:
    """`upload`'s chunks, checked against `limit` (`limits.max_transfer_bytes`) and its announced size.

    `outcome` is appended to every error (e.g. "; nothing was stored") by callers whose request body
    this is the whole of, so the failure can say what became of the upload; callers that clean up
    after a failed body say it in their own message and leave it empty."""
    sent = 0
    async for chunk in upload.chunks:
        sent += len(chunk)
        if sent > upload.size:  # first: a lying source, not the limit, is what went wrong here
            raise BackendError(
                f"the source of {upload.name!r} sent more than the {upload.size:,} bytes it announced{outcome}"
            )
        if sent > limit:
            raise TooLargeError(
                f"{upload.name!r} grew past this server's transfer limit of {limit:,} bytes "
                f"(limits.max_transfer_bytes){outcome}"
            )
        yield chunk
    if sent != upload.size:
        raise BackendError(
            f"the source of {upload.name!r} ended after {sent:,} of {upload.size:,} bytes (truncated){outcome}"
        )


async def checked_download(
    chunks: AsyncIterator[bytes],
    *,
    name: str,
    size: int | None,
    limit: int,
    source: str = "the CRM",
    size_from: str = "it announced",
    hint: str = "try again",
    broken_on: tuple[type[BaseException], ...] = (),
    broken: Callable[[BaseException, int], BaseException] | None = None,
) -> AsyncGenerator[bytes, None]:
    """`chunks` (a file's bytes from `source`), checked against `limit` (`limits.max_transfer_bytes`)
    and against `size` when one was announced (None: unknown, only the limit applies). Each chunk is
    counted as it arrives, so a body that passes `limit` or `size` is refused at that chunk and
    nothing after it is read; a body that ends short is an error at its end, never a short file.

    `source` names the CRM in messages, `size_from` says where `size` came from (a Content-Length,
    a record's size field) and `hint` what to do about a body of the wrong length: a cut connection
    is worth retrying, a size field that disagrees with the stored bytes is not.

    `broken(exc, received)` turns the HTTP library's errors (`broken_on`) into the vendor's own
    message, which says how far the body got. Why here and not in a wrapper around this: one
    generator layer per chunk instead of two (a wrapper doubled this path's per-chunk CPU).
    `chunks` is closed when this is, so the answer underneath is not left half-read until collected.
    """
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if size is not None and received > size:  # first: the answer, not the file, is wrong
                raise _wrong_length(
                    source, f"more than the {size:,}", name, size_from, "is not what was announced", hint
                )
            if received > limit:
                raise TooLargeError(
                    f"{name!r} grew past this server's transfer limit of {limit:,} bytes (limits.max_transfer_bytes)"
                )
            yield chunk
    except broken_on as exc:
        if broken is None:
            raise
        raise broken(exc, received) from None
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
    if size is not None and received < size:
        raise _wrong_length(source, f"only {received:,} of the {size:,}", name, size_from, "is incomplete", hint)


def _wrong_length(source: str, amount: str, name: str, size_from: str, state: str, hint: str) -> BackendError:
    return BackendError(f"{source} sent {amount} bytes of {name!r} {size_from}: the file {state}; {hint}")
