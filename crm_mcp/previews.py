"""Downscaled previews of photos too large to show inline.

A model can only look at an image that travels inline, and `limits.inline_bytes` keeps tool results
small; so a large photo is shown as a smaller copy (the full photo stays a resource link). Pillow is
an optional extra (`pip install 'crm-mcp[previews]'`): without it the tool still works and says how
to get previews. Decoding is bounded — only a few formats, a pixel-count cap checked from the header
before any pixel is decoded, and Pillow's own decompression-bomb guard — and runs in a worker
thread, because decoding and re-encoding a 20-megapixel JPEG takes long enough to stall every other
request on the event loop.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio

from crm_mcp.errors import TooLargeError
from crm_mcp.resources import read_all

if TYPE_CHECKING:
    from PIL.Image import Image

    from crm_mcp.backends.base import Backend
    from crm_mcp.config import Limits

__all__ = [
    "INLINE_IMAGE_TYPES",
    "INSTALL_HINT",
    "MAX_PREVIEW_PIXELS",
    "MAX_PREVIEW_SOURCE_BYTES",
    "InlinePhoto",
    "NoPreview",
    "Preview",
    "inline_photo",
    "make_preview",
    "pillow_available",
]

logger = logging.getLogger(__name__)

INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
"""Image types MCP clients render inline; others (TIFF, BMP) can only be shown as a preview."""
PREVIEWABLE_TYPES = INLINE_IMAGE_TYPES | {"image/bmp", "image/tiff"}
"""Image types a preview is made from (HEIC, AVIF and SVG are only linked)."""

INSTALL_HINT = "pip install 'crm-mcp[previews]'"
MAX_PREVIEW_PIXELS = 50_000_000
"""Largest image (width x height) decoded for a preview: 50 megapixels is a large camera photo;
beyond that the decoded pixels alone would take hundreds of MB. Below Pillow's own bomb limit."""
MAX_PREVIEW_SOURCE_BYTES = 32 * 1024 * 1024
"""Largest photo file read into memory to make a preview."""
START_EDGE = 1024
"""Longest side of the first attempt: more than a model needs to recognise a face or read a label."""
MIN_EDGE = 16
"""Below this a preview shows nothing useful: give up instead."""
_SHRINK = 0.7
_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
"""Formats Pillow may try (others are never parsed: less decoder code reachable from CRM bytes)."""
_ORIENTATION = 0x0112
_SIDEWAYS = (5, 6, 7, 8)
"""EXIF orientations that turn the picture by 90°: its displayed width is the stored height."""
_JPEG_QUALITIES = (85, 70, 50)
_WEBP_QUALITIES = (80, 60, 40)


@dataclass(frozen=True)
class Preview:
    """A re-encoded, smaller copy of a photo that fits the inline limit."""

    data: bytes
    mime_type: str
    width: int
    height: int
    original_width: int
    original_height: int


@dataclass(frozen=True)
class NoPreview:
    """Why no preview could be made: a sentence to put in the tool's text as it is."""

    reason: str


@dataclass(frozen=True)
class InlinePhoto:
    """What get_contact_photo shows inline: the photo itself, a preview, or nothing (and why)."""

    kind: Literal["photo", "preview", "none"]
    data: bytes | None = None
    mime_type: str | None = None
    width: int = 0
    height: int = 0
    original_width: int = 0
    original_height: int = 0
    reason: str = ""


async def inline_photo(crm: Backend, contact_id: str, mime_type: str, size: int | None, limits: Limits) -> InlinePhoto:
    """The photo itself when it fits `limits.inline_bytes` and clients render its type, else a preview
    when one can be made, else the reason there is none. Reads the photo only when it will be shown."""
    limit = limits.inline_bytes
    if mime_type not in PREVIEWABLE_TYPES:
        return InlinePhoto("none", reason=f"{mime_type} images cannot be shown inline or previewed")
    if limit <= 0:
        return InlinePhoto("none", reason="inline images are turned off (limits.inline_bytes is 0)")
    fits = mime_type in INLINE_IMAGE_TYPES and (size is None or size <= limit)
    if not fits and not pillow_available():
        return InlinePhoto("none", reason=_no_pillow())
    read_limit = min(max(limit, MAX_PREVIEW_SOURCE_BYTES), limits.max_transfer_bytes)
    if size is not None and size > read_limit:
        return InlinePhoto("none", reason=_too_big(f"is {size:,} bytes", read_limit))
    async with crm.open_contact_photo(contact_id) as download:
        try:
            data = await read_all(download, read_limit)
        except TooLargeError:
            return InlinePhoto("none", reason=_too_big("grew past", read_limit))
        actual_type = download.mime_type
    if len(data) <= limit and actual_type in INLINE_IMAGE_TYPES:
        return InlinePhoto("photo", data=data, mime_type=actual_type)
    preview = await make_preview(data, limit)
    if isinstance(preview, NoPreview):
        return InlinePhoto("none", reason=preview.reason)
    return InlinePhoto(
        "preview",
        data=preview.data,
        mime_type=preview.mime_type,
        width=preview.width,
        height=preview.height,
        original_width=preview.original_width,
        original_height=preview.original_height,
    )


def _no_pillow() -> str:
    return (
        "no preview is shown because the server does not have Pillow installed; to get previews, install "
        f"it where crm-mcp runs: {INSTALL_HINT}"
    )


def _too_big(what: str, limit: int) -> str:
    return f"no preview is shown because the photo {what} the {limit:,} bytes previews are made from"


def pillow_available() -> bool:
    """Whether the optional Pillow dependency can be imported."""
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True


async def make_preview(data: bytes, limit: int) -> Preview | NoPreview:
    """A preview of the image `data` of at most `limit` bytes, or why there is none. Never raises
    for bad image bytes; runs the decoding in a worker thread."""
    if limit <= 0:
        return NoPreview("no preview is shown because limits.inline_bytes is 0 (inline images are turned off)")
    if not pillow_available():
        return NoPreview(_no_pillow())
    if len(data) > MAX_PREVIEW_SOURCE_BYTES:
        return NoPreview(_too_big(f"is {len(data):,} bytes", MAX_PREVIEW_SOURCE_BYTES))
    return await anyio.to_thread.run_sync(render_preview, data, limit)


def render_preview(data: bytes, limit: int) -> Preview | NoPreview:
    """The blocking part of `make_preview` (call it in a worker thread)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=_FORMATS) as opened:
            width, height = opened.size
            if width * height > MAX_PREVIEW_PIXELS:
                return NoPreview(
                    f"no preview is shown because the image is {width}x{height} pixels, over the "
                    f"{MAX_PREVIEW_PIXELS:,}-pixel limit for decoding previews"
                )
            opened.seek(0)  # animated GIF/WebP/PNG: the first frame
            if opened.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: far less memory and time for big photos.
                opened.draft("RGB", (START_EDGE, START_EDGE))
            if opened.getexif().get(_ORIENTATION) in _SIDEWAYS:
                width, height = height, width  # the photo as it is meant to be seen
            opened.load()
            image = ImageOps.exif_transpose(opened) or opened
            image = _flatten_mode(image)
            return _fit(image, limit, width, height)
    except Image.DecompressionBombError:
        return NoPreview("no preview is shown because the image has too many pixels to decode safely")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        return NoPreview(
            "no preview is shown because the photo's bytes could not be decoded as an image "
            f"(corrupt, truncated or an unsupported format: {type(exc).__name__})"
        )
    except Exception as exc:  # a decoder's own bug on hostile bytes: still no reason to fail the tool
        logger.warning("making a preview failed", exc_info=exc)
        return NoPreview(
            "no preview is shown because the photo's bytes could not be decoded as an image "
            f"(corrupt, truncated or an unsupported format: {type(exc).__name__})"
        )


def _has_alpha(image: Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def _flatten_mode(image: Image) -> Image:
    """RGBA when the image has transparency (kept in the preview), else RGB."""
    if _has_alpha(image):
        return image.convert("RGBA") if image.mode != "RGBA" else image
    return image.convert("RGB") if image.mode != "RGB" else image


def _encodings(image: Image) -> list[tuple[str, str, dict[str, Any]]]:
    """(Pillow format, MIME type, save options) to try, smallest-quality-loss first."""
    from PIL import features

    webp = bool(features.check("webp"))
    if image.mode == "RGBA":
        options: list[tuple[str, str, dict[str, Any]]] = [("PNG", "image/png", {"optimize": True})]
    else:
        options = [("JPEG", "image/jpeg", {"quality": q, "optimize": True}) for q in _JPEG_QUALITIES]
    if webp:
        options += [("WEBP", "image/webp", {"quality": q, "method": 4}) for q in _WEBP_QUALITIES]
    return options


def _fit(image: Image, limit: int, width: int, height: int) -> Preview | NoPreview:
    """Shrink (never enlarge) and re-encode until the bytes fit `limit`."""
    from PIL import Image as PILImage

    edge = min(START_EDGE, max(image.size))
    encodings = _encodings(image)
    while edge >= MIN_EDGE:
        candidate = image.copy()
        candidate.thumbnail((edge, edge), PILImage.Resampling.LANCZOS)  # keeps the aspect ratio; never upscales
        for fmt, mime, options in encodings:
            buffer = io.BytesIO()
            candidate.save(buffer, format=fmt, **options)
            if buffer.tell() <= limit:
                return Preview(buffer.getvalue(), mime, candidate.width, candidate.height, width, height)
        edge = int(edge * _SHRINK)
    return NoPreview(
        f"no preview is shown because even a {MIN_EDGE}-pixel copy is over the inline limit of {limit:,} bytes"
    )
