"""MIME detection and the inline-or-resource decisions.

CRMs store whatever MIME type the uploader claimed, and models rarely know one: so when the caller
gives none we look at the first bytes (magic numbers) and only then at the file name. A few
container formats (ZIP, OLE2) say only "a container", so there the name refines the answer
(`.docx` is a ZIP).
"""

from __future__ import annotations

import functools
import mimetypes
import re

from crm_mcp.errors import InvalidInputError

__all__ = [
    "OCTET_STREAM",
    "SNIFF_BYTES",
    "detect_mime",
    "extension_for",
    "is_image",
    "is_text",
    "normalize_mime",
    "sniff",
]

SNIFF_BYTES = 4096
"""How many leading bytes detection looks at."""
OCTET_STREAM = "application/octet-stream"

_MIME_FORMAT = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")

_EXTRA_TYPES = {
    ".md": "text/markdown",
    ".csv": "text/csv",
    ".log": "text/plain",
    ".json": "application/json",
    ".webp": "image/webp",
    ".heic": "image/heic",
    ".avif": "image/avif",
    ".msg": "application/vnd.ms-outlook",
    ".eml": "message/rfc822",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".7z": "application/x-7z-compressed",
}

_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"\x00\x00\x01\x00", "image/vnd.microsoft.icon"),
    (b"\x1f\x8b", "application/gzip"),
    (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (b"Rar!\x1a\x07", "application/vnd.rar"),
    (b"ID3", "audio/mpeg"),
    (b"OggS", "audio/ogg"),
    (b"fLaC", "audio/flac"),
    (b"{\\rtf", "application/rtf"),
)
_ZIP = b"PK\x03\x04"
_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_FTYP_BRANDS = {
    b"avif": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"mif1": "image/heif",
    b"qt  ": "video/quicktime",
    b"M4A ": "audio/mp4",
}
_TEXTUAL_APPLICATION = {
    "application/json",
    "application/xml",
    "application/yaml",
    "application/javascript",
    "application/x-ndjson",
    "application/sql",
    "image/svg+xml",
    "message/rfc822",
}


def normalize_mime(value: str) -> str:
    """Lower-case `type/subtype` without parameters; `InvalidInputError` if it is not one."""
    essence = value.split(";", 1)[0].strip().lower()
    if not _MIME_FORMAT.match(essence):
        raise InvalidInputError(
            f"mime_type {value!r} is not a MIME type: use the form 'type/subtype', e.g. 'application/pdf' "
            "or 'image/png', or leave it out to have it detected from the bytes"
        )
    return essence


def from_name(name: str | None) -> str | None:
    """The MIME type the file name's extension suggests, if any."""
    if not name:
        return None
    return _from_suffix(_suffix(name).lower())


def _suffix(name: str) -> str:
    """`PurePosixPath(name).suffix` with backslashes as separators, without building a path: a
    listing asks this once per file (Creatio and SuperOffice keep no MIME type), and the path
    object cost more than the rest of turning a CRM row into a file entry.

    The same rules: empty and `.` components do not count, a leading dot is a hidden file's name
    rather than its extension, and a trailing dot is no extension."""
    final = name if "/" not in name and "\\" not in name and name != "." else ""
    if not final:
        for part in reversed(name.replace("\\", "/").split("/")):
            if part and part != ".":
                final = part
                break
    dot = final.rfind(".")
    return final[dot:] if 0 < dot < len(final) - 1 else ""


@functools.lru_cache(maxsize=512)
def _from_suffix(suffix: str) -> str | None:
    """Bounded cache: the suffixes come from CRM data, and a listing repeats the same few."""
    if suffix in _EXTRA_TYPES:
        return _EXTRA_TYPES[suffix]
    guessed, _ = mimetypes.guess_type("x" + suffix, strict=False)
    return guessed


def sniff(head: bytes) -> str | None:
    """The MIME type the leading bytes prove, or None when they prove nothing."""
    for prefix, mime in _PREFIXES:
        if head.startswith(prefix):
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(head[8:12], "video/mp4")
    if head.startswith(_ZIP):
        return "application/zip"
    if head.startswith(_OLE2):
        return "application/x-ole-storage"
    if _looks_like_text(head):
        stripped = head.lstrip()
        if stripped.startswith(b"<svg") or (stripped.startswith(b"<?xml") and b"<svg" in head):
            return "image/svg+xml"
        if stripped.startswith((b"{", b"[")) and _is_json_start(stripped):
            return "application/json"
        return "text/plain"
    return None


def detect_mime(head: bytes, name: str | None = None) -> str:
    """Best MIME type for bytes starting with `head` and called `name`.

    Bytes win over the name, except where the bytes only say "container" or "some text" and the
    name is more precise (`report.docx` is a ZIP, `data.csv` is text).
    """
    sniffed = sniff(head)
    named = from_name(name)
    if sniffed is None:
        return named or OCTET_STREAM
    if named is None:
        return sniffed
    if sniffed == "application/zip" and (named.startswith("application/vnd.") or named.endswith("+zip")):
        return named
    if sniffed == "application/x-ole-storage" and named.startswith("application/"):
        return named
    if sniffed in ("text/plain", "application/json") and is_text(named):
        return named
    if sniffed == "application/x-ole-storage":
        return OCTET_STREAM
    return sniffed


def is_text(mime: str) -> bool:
    """Whether files of this type are text a model can read directly."""
    essence = mime.split(";", 1)[0].strip().lower()
    return essence.startswith("text/") or essence in _TEXTUAL_APPLICATION or essence.endswith(("+json", "+xml"))


def is_image(mime: str) -> bool:
    """Whether this is a raster or vector image type."""
    return mime.lower().startswith("image/")


def extension_for(mime: str) -> str:
    """The usual file extension for a MIME type ('' when none is known)."""
    for suffix, known in _EXTRA_TYPES.items():
        if known == mime:
            return suffix
    return mimetypes.guess_extension(mime, strict=False) or ""


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sample is still text.
        if exc.start < len(head) - 3:
            return False
    return True


def _is_json_start(stripped: bytes) -> bool:
    second = stripped[1:].lstrip()[:1]
    return second in (b'"', b"{", b"[", b"]", b"}") or second.isdigit() or second in (b"-", b"t", b"f", b"n")
