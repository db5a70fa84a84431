"""A tiny PNG encoder and canvas, so the demo data can ship real images without an imaging library.

Only what the demo needs: 8-bit RGB, no filtering, one IDAT chunk. The output is a valid PNG that
every viewer (and every MCP client) decodes.
"""

from __future__ import annotations

import math
import struct
import zlib

__all__ = ["Canvas", "encode_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_RGB = 2
"""PNG colour type 2: truecolour, three samples per pixel."""

Colour = tuple[int, int, int]


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, and the CRC over type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(width: int, height: int, rgb: bytes | bytearray, *, level: int = 6) -> bytes:
    """Encode `width` x `height` RGB pixels (row-major, 3 bytes each) as a PNG file."""
    stride = width * 3
    if width < 1 or height < 1 or len(rgb) != stride * height:
        raise ValueError(f"expected {stride * height} bytes of RGB for {width}x{height}, got {len(rgb)}")
    # Filter type 0 (None) before every row: simplest, and zlib still compresses flat areas well.
    raw = b"".join(b"\x00" + bytes(rgb[row * stride : (row + 1) * stride]) for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, _RGB, 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, level)) + _chunk(b"IEND", b"")


class Canvas:
    """An RGB pixel buffer with the few drawing operations the demo pictures use.

    Every operation works on whole horizontal spans (slice assignment), never pixel by pixel, so a
    picture of a few hundred thousand pixels is drawn in milliseconds.
    """

    def __init__(self, width: int, height: int, background: Colour = (255, 255, 255)) -> None:
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(background) * (width * height))

    def span(self, y: int, x0: int, x1: int, colour: Colour) -> None:
        """Paint pixels x0..x1-1 of row y (clipped to the canvas)."""
        x0, x1 = max(0, x0), min(self.width, x1)
        if 0 <= y < self.height and x0 < x1:
            start = (y * self.width + x0) * 3
            self.pixels[start : start + (x1 - x0) * 3] = bytes(colour) * (x1 - x0)

    def rect(self, x0: int, y0: int, x1: int, y1: int, colour: Colour) -> None:
        """Fill the rectangle [x0, x1) x [y0, y1)."""
        for y in range(max(0, y0), min(self.height, y1)):
            self.span(y, x0, x1, colour)

    def vertical_gradient(self, top: Colour, bottom: Colour) -> None:
        """Fill the whole canvas with a top-to-bottom gradient."""
        for y in range(self.height):
            t = y / max(1, self.height - 1)
            colour = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
            self.span(y, 0, self.width, colour)  # type: ignore[arg-type]

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, colour: Colour) -> None:
        """Fill an axis-aligned ellipse centred on (cx, cy)."""
        for y in range(max(0, math.floor(cy - ry)), min(self.height, math.ceil(cy + ry) + 1)):
            dy = (y + 0.5 - cy) / ry
            if abs(dy) <= 1:
                half = rx * math.sqrt(1 - dy * dy)
                self.span(y, round(cx - half), round(cx + half), colour)

    def triangle_up(self, cx: float, base_y: int, half_width: float, height: int, colour: Colour) -> None:
        """Fill an upward-pointing isosceles triangle (a flame, a tree): apex at (cx, base_y - height)."""
        for step in range(height):
            half = half_width * (step + 1) / height
            self.span(base_y - height + step, round(cx - half), round(cx + half), colour)

    def png(self, *, level: int = 6) -> bytes:
        """The picture as PNG bytes."""
        return encode_png(self.width, self.height, self.pixels, level=level)
