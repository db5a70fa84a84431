"""Previews of photos over `limits.inline_bytes`: smaller, same shape, oriented, bounded, never a crash."""

from __future__ import annotations

import base64
import io
import random
import struct
import sys
import threading
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from mcp import Client
from PIL import Image

from crm_mcp import previews
from crm_mcp.backends import _demo as demo
from crm_mcp.config import Settings
from crm_mcp.previews import INSTALL_HINT, MAX_PREVIEW_PIXELS, NoPreview, Preview, make_preview
from crm_mcp.server import build_server
from tests.faults.targets import TARGETS
from tests.helpers import call, find_one, ok, read_bytes, text_of

pytestmark = pytest.mark.anyio

LIMIT = 64 * 1024


def noisy(size: tuple[int, int], mode: str = "RGB", seed: int = 1) -> Image.Image:
    """An image that does not compress: so its file is large for its pixel count."""
    rng = random.Random(seed)
    channels = len(mode)
    return Image.frombytes(mode, size, rng.randbytes(size[0] * size[1] * channels))


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


async def preview_of(data: bytes, limit: int = LIMIT) -> Preview:
    result = await make_preview(data, limit)
    assert isinstance(result, Preview), result
    return result


def decoded(preview: Preview) -> Image.Image:
    image = Image.open(io.BytesIO(preview.data))
    assert Image.MIME[image.format] == preview.mime_type
    assert image.size == (preview.width, preview.height)
    return image


# ------------------------------------------------------------------------------------ size and shape


@pytest.mark.parametrize("size", [(3000, 2000), (900, 1600), (5000, 400)])
async def test_a_large_photo_becomes_a_preview_under_the_limit_with_its_aspect_ratio(size: tuple[int, int]) -> None:
    data = encoded(noisy(size), "JPEG", quality=95)
    assert len(data) > LIMIT
    preview = await preview_of(data)
    assert len(preview.data) <= LIMIT
    assert (preview.original_width, preview.original_height) == size
    assert max(preview.width, preview.height) <= previews.START_EDGE
    # thumbnail() rounds each side to whole pixels: the ratio may move by one pixel's worth, no more
    assert preview.width / preview.height == pytest.approx(
        size[0] / size[1], rel=1 / min(preview.width, preview.height)
    )
    decoded(preview).load()


async def test_a_tight_limit_shrinks_further_and_still_fits() -> None:
    data = encoded(noisy((1200, 800)), "PNG")
    preview = await preview_of(data, limit=6_000)
    assert len(preview.data) <= 6_000
    assert preview.width < 1024
    assert preview.width / preview.height == pytest.approx(1.5, rel=0.1)


async def test_a_small_image_is_never_enlarged() -> None:
    data = encoded(noisy((40, 30)), "PNG")  # 3.6 KB of noise: over a 2 KB limit, but tiny in pixels
    preview = await preview_of(data, limit=2_000)
    assert preview.width <= 40 and preview.height <= 30


async def test_a_limit_no_image_fits_gives_no_preview_and_says_why() -> None:
    result = await make_preview(encoded(noisy((400, 400)), "PNG"), limit=30)
    assert isinstance(result, NoPreview)
    assert "over the inline limit of 30 bytes" in result.reason


async def test_inline_images_turned_off_give_no_preview() -> None:
    result = await make_preview(encoded(noisy((50, 50)), "PNG"), limit=0)
    assert isinstance(result, NoPreview) and "inline_bytes is 0" in result.reason


# ------------------------------------------------------------------------------------ image content


async def test_exif_orientation_is_applied() -> None:
    """A camera stores a portrait shot as a landscape with "rotate 90°" in EXIF (orientation 6)."""
    stored = Image.new("RGB", (800, 400), (255, 0, 0))
    stored.paste((0, 0, 255), (400, 0, 800, 400))  # stored: red left half, blue right half
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(stored, "JPEG", quality=90, exif=exif.tobytes())
    preview = await preview_of(data, limit=len(data) - 1)
    assert (preview.original_width, preview.original_height) == (400, 800)
    assert preview.height > preview.width
    image = decoded(preview).convert("RGB")
    top = image.getpixel((image.width // 2, image.height // 8))
    bottom = image.getpixel((image.width // 2, image.height * 7 // 8))
    # orientation 6: turn 90° clockwise to display, so the stored left (red) ends up on top
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


async def test_transparency_is_kept() -> None:
    image = noisy((600, 600), "RGBA")
    image.putalpha(Image.new("L", image.size, 255))
    image.paste((0, 0, 0, 0), (0, 0, 300, 600))  # left half fully transparent
    data = encoded(image, "PNG")
    preview = await preview_of(data)
    assert preview.mime_type in ("image/png", "image/webp")
    shown = decoded(preview).convert("RGBA")
    assert shown.getpixel((shown.width // 8, shown.height // 2))[3] == 0
    assert shown.getpixel((shown.width * 7 // 8, shown.height // 2))[3] == 255


async def test_an_animated_gif_is_previewed_by_its_first_frame() -> None:
    frames = [noisy((500, 400), seed=seed).quantize(64) for seed in (1, 2)]
    first = Image.new("P", (500, 400))
    first.putpalette([255, 0, 0] * 256)
    frames[0] = first
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    preview = await preview_of(data, limit=4_000)
    shown = decoded(preview)
    assert getattr(shown, "n_frames", 1) == 1
    red, green, blue = shown.convert("RGB").getpixel((shown.width // 2, shown.height // 2))[:3]
    assert red > 200 and green < 60 and blue < 60


async def test_a_palette_image_with_transparency_keeps_it() -> None:
    image = noisy((500, 500)).quantize(200)
    image.paste(0, (0, 0, 250, 500))
    data = encoded(image, "GIF", transparency=0)
    preview = await preview_of(data, limit=min(len(data) - 1, LIMIT))
    assert decoded(preview).convert("RGBA").getpixel((10, preview.height // 2))[3] == 0


# ----------------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 100,
        encoded(noisy((300, 300)), "JPEG")[:3000],  # cut short
        b"GIF89a" + b"\xff" * 5000,
        b"not an image at all",
        b"",
    ],
    ids=["garbage-png", "truncated-jpeg", "garbage-gif", "text", "empty"],
)
async def test_corrupt_images_give_no_preview_and_a_clear_reason(data: bytes) -> None:
    result = await make_preview(data, LIMIT)
    assert isinstance(result, NoPreview), result
    assert "could not be decoded" in result.reason


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that announces `width` x `height` and holds almost no pixel data (a decompression bomb's
    shape): refusing it must not need decoding it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


async def test_an_image_with_too_many_pixels_is_not_decoded() -> None:
    side = int(MAX_PREVIEW_PIXELS**0.5) + 100  # over our cap, under Pillow's own bomb limit
    result = await make_preview(png_header_only(side, side), LIMIT)
    assert isinstance(result, NoPreview)
    assert f"{side}x{side} pixels" in result.reason


async def test_a_decompression_bomb_is_refused_by_pillows_limit() -> None:
    result = await make_preview(png_header_only(30_000, 30_000), LIMIT)  # 900 Mpx, past 2x MAX_IMAGE_PIXELS
    assert isinstance(result, NoPreview)
    assert "too many pixels to decode safely" in result.reason


async def test_decoding_runs_in_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    render = previews.render_preview

    def recording(data: bytes, limit: int) -> Preview | NoPreview:
        threads.append(threading.get_ident())
        return render(data, limit)

    monkeypatch.setattr(previews, "render_preview", recording)
    await preview_of(encoded(noisy((300, 300)), "PNG"))
    assert threads and threads[0] != threading.get_ident()


def hide_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import PIL...` fail as it does where the extra is not installed."""
    for name in [name for name in sys.modules if name == "PIL" or name.startswith("PIL.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "PIL", None)


async def test_without_pillow_there_is_no_preview_and_the_reason_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hide_pillow(monkeypatch)
    assert previews.pillow_available() is False
    result = await make_preview(b"\x89PNG\r\n\x1a\n" + b"x" * 100, LIMIT)
    assert isinstance(result, NoPreview)
    assert INSTALL_HINT in result.reason and "Pillow" in result.reason


# ---------------------------------------------------------------------------------- get_contact_photo


async def test_get_contact_photo_shows_a_preview_of_a_large_photo(client: Client) -> None:
    result = await call(client, "get_contact_photo", contact_id=demo.CONTACT_MARIA_GARCIA)
    assert not result.is_error, text_of(result)
    structured = result.structured_content
    photo, preview = structured["photo"], structured["preview"]
    assert photo["size"] > 262_144 and structured["shown_inline"] == "preview"
    (image,) = [block for block in result.content if block.type == "image"]
    (link,) = [block for block in result.content if block.type == "resource_link"]
    shown = base64.b64decode(image.data)
    assert len(shown) == preview["size"] <= 262_144
    assert image.mime_type == preview["mime_type"]
    # the link still leads to the full photo, byte for byte
    full, mime = await read_bytes(client, link.uri)
    assert len(full) == photo["size"] and mime == photo["mime_type"] == link.mime_type
    original = Image.open(io.BytesIO(full))
    small = Image.open(io.BytesIO(shown))
    assert small.size == (preview["width"], preview["height"])
    assert small.width <= original.width
    assert small.width / small.height == pytest.approx(original.width / original.height, abs=0.02)
    text = text_of(result)
    assert "preview" in text and f"{original.width}x{original.height}" in text and photo["resource_uri"] in text


async def test_get_contact_photo_without_pillow_links_the_photo_and_says_how_to_get_previews(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide_pillow(monkeypatch)
    result = await call(client, "get_contact_photo", contact_id=demo.CONTACT_MARIA_GARCIA)
    assert not result.is_error, text_of(result)
    assert [block.type for block in result.content] == ["text", "resource_link"]
    assert result.structured_content["shown_inline"] == "none" and result.structured_content["preview"] is None
    text = text_of(result)
    assert "no preview is shown" in text and "pip install 'crm-mcp[previews]'" in text
    # a photo small enough needs no Pillow: still inline
    small = await call(client, "get_contact_photo", contact_id=demo.CONTACT_ALEXANDER_WILSON)
    assert small.structured_content["shown_inline"] == "photo"
    assert [block.type for block in small.content] == ["text", "image", "resource_link"]


async def test_a_corrupt_stored_photo_is_linked_with_a_clear_reason(client: Client) -> None:
    garbage = b"\x89PNG\r\n\x1a\n" + random.Random(3).randbytes(300_000)
    await ok(
        client,
        "bind_photo",
        contact_id=demo.CONTACT_JOHN_BEST,
        content_base64=base64.b64encode(garbage).decode(),
        file_name="broken.png",
    )
    result = await call(client, "get_contact_photo", contact_id=demo.CONTACT_JOHN_BEST)
    assert not result.is_error, text_of(result)
    assert [block.type for block in result.content] == ["text", "resource_link"]
    assert "could not be decoded" in text_of(result)


async def test_a_tiff_photo_is_shown_as_a_preview_even_when_small(client: Client) -> None:
    """Clients do not render TIFF: a preview in a type they do is the only way to show it."""
    tiff = encoded(noisy((64, 48)), "TIFF")
    await ok(client, "bind_photo", contact_id=demo.CONTACT_JOHN_BEST, content_base64=base64.b64encode(tiff).decode())
    result = await ok(client, "get_contact_photo", contact_id=demo.CONTACT_JOHN_BEST)
    assert result["photo"]["mime_type"] == "image/tiff"
    assert result["shown_inline"] == "preview" and result["preview"]["mime_type"] != "image/tiff"
    assert (result["preview"]["width"], result["preview"]["height"]) == (64, 48)


async def test_previews_respect_a_configured_inline_limit(make_settings: Callable[..., Settings]) -> None:
    async with Client(build_server(make_settings("[limits]\ninline_bytes = 20000\n"))) as client:
        result = await ok(client, "get_contact_photo", contact_id=demo.CONTACT_MARIA_GARCIA)
        assert result["shown_inline"] == "preview" and result["preview"]["size"] <= 20_000


@pytest.mark.parametrize("vendor", ["creatio", "espocrm", "superoffice", "wello"])
async def test_vendor_photos_over_the_limit_are_previewed(make_settings: Callable[..., Settings], vendor: str) -> None:
    """Through each vendor's backend (Creatio announces no photo size: the preview path must not need one)."""
    target = TARGETS[vendor]
    sim = target.make()
    photo = encoded(noisy((900, 600)), "JPEG", quality=95)
    assert len(photo) > 100_000
    settings = make_settings(target.toml(sim) + "\n[limits]\ninline_bytes = 100000\n")
    async with Client(build_server(settings, transport=httpx.ASGITransport(app=sim))) as client:
        contact_id = await find_one(client, "contact", "Alexander Wilson")
        encoded_photo = base64.b64encode(photo).decode()
        await ok(client, "bind_photo", contact_id=contact_id, content_base64=encoded_photo, file_name="big.jpg")
        result = await call(client, "get_contact_photo", contact_id=contact_id)
        assert not result.is_error, text_of(result)
        assert result.structured_content["shown_inline"] == "preview"
        preview = result.structured_content["preview"]
        assert preview["size"] <= 100_000 and preview["width"] <= 900
        assert preview["width"] / preview["height"] == pytest.approx(1.5, abs=0.01)
        (image,) = [block for block in result.content if block.type == "image"]
        shown = base64.b64decode(image.data)
        assert len(shown) == preview["size"]
        assert Image.open(io.BytesIO(shown)).size == (preview["width"], preview["height"])
        assert "900x600 photo" in text_of(result)
