"""The shared stream helpers: the streaming base64 encoder and the checked upload body."""

from __future__ import annotations

import base64
import random
from collections.abc import AsyncIterator

import pytest

from crm_mcp.backends._streams import base64_encoded, base64_length, checked_upload
from crm_mcp.backends.base import Upload
from crm_mcp.errors import BackendError, TooLargeError

pytestmark = pytest.mark.anyio


async def pieces_of(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for size in sizes:
        yield data[start : start + size]
        start += size
    if start < len(data):
        yield data[start:]


@pytest.mark.parametrize("sizes", [[1] * 10, [2, 5, 7, 1], [4096], [3, 3, 3], [0, 1, 0, 2]])
async def test_any_chunking_gives_the_base64_of_the_whole(sizes: list[int]) -> None:
    data = random.Random(5).randbytes(sum(sizes) + 11)
    text = b"".join([piece async for piece in base64_encoded(pieces_of(data, sizes), piece=6)])
    assert text == base64.b64encode(data)
    assert len(text) == base64_length(len(data))


async def test_pieces_stay_small() -> None:
    data = bytes(1000)
    lengths = [len(piece) async for piece in base64_encoded(pieces_of(data, [1000]), piece=30)]
    assert max(lengths) == 40


async def test_empty_input_gives_empty_text() -> None:
    assert [piece async for piece in base64_encoded(pieces_of(b"", []))] == []


async def test_piece_must_be_whole_groups() -> None:
    with pytest.raises(ValueError, match="multiple of 3"):
        _ = [piece async for piece in base64_encoded(pieces_of(b"abc", [3]), piece=4)]


async def _pieces(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_checked_upload_passes_a_source_that_keeps_its_word() -> None:
    upload = Upload("a.bin", "application/octet-stream", 6, _pieces(b"abc", b"def"))
    assert [chunk async for chunk in checked_upload(upload, limit=100)] == [b"abc", b"def"]


@pytest.mark.parametrize(
    ("size", "limit", "error", "words"),
    [
        (4, 100, BackendError, "more than the 4 bytes it announced"),
        (9, 100, BackendError, "ended after 6 of 9 bytes"),
        (6, 5, TooLargeError, "transfer limit of 5 bytes"),
    ],
)
async def test_checked_upload_stops_a_source_that_does_not(
    size: int, limit: int, error: type[Exception], words: str
) -> None:
    upload = Upload("a.bin", "application/octet-stream", size, _pieces(b"abc", b"def"))
    with pytest.raises(error, match=words):
        async for _ in checked_upload(upload, limit=limit):
            pass
