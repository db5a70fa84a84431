"""The shared streaming base64 encoder."""

from __future__ import annotations

import base64
import random
from collections.abc import AsyncIterator

import pytest

from crm_mcp.backends._streams import base64_encoded, base64_length

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
