"""`save_file`'s writer (`tools._write_atomically`): small chunks are gathered into 1 MiB writes, and the
file, its hash, its size and the progress reports stay exactly those of the chunks received."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from crm_mcp import tools
from crm_mcp.errors import InvalidInputError, TooLargeError

pytestmark = pytest.mark.anyio

CHUNK = 48 * 1024  # what the base64 vendors yield per decoded piece


async def _chunks(data: bytes, size: int = CHUNK) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


class _Recorder:
    """Records the size of every write `_write_atomically` hands to its worker thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.writes: list[int] = []
        real = tools._HashedFile.write

        def counted(sink: tools._HashedFile, piece: bytes) -> None:
            self.writes.append(len(piece))
            real(sink, piece)

        monkeypatch.setattr(tools._HashedFile, "write", counted)


async def test_small_chunks_are_written_in_one_mib_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = _Recorder(monkeypatch)
    data = os.urandom(3 * tools.WRITE_PIECE + 1_000)
    reports: list[tuple[int, int | None]] = []

    async def progress(done: int, total: int | None) -> None:
        reports.append((done, total))

    target = tmp_path / "big.bin"
    size, digest = await tools._write_atomically(_chunks(data), target, False, len(data), 10 * len(data), progress)
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
    assert target.read_bytes() == data
    assert len(recorder.writes) == 3 and sum(recorder.writes) == len(data)  # not one write per 48 KiB chunk (65)
    assert all(tools.WRITE_PIECE <= n < tools.WRITE_PIECE + CHUNK for n in recorder.writes[:-1])
    assert len(reports) == -(-len(data) // CHUNK) and reports[-1] == (len(data), len(data))  # still per chunk
    assert [p.name for p in tmp_path.iterdir()] == ["big.bin"]


async def test_a_short_transfer_leaves_nothing_behind(tmp_path: Path) -> None:
    async def quiet(done: int, total: int | None) -> None:
        return None

    data = os.urandom(tools.WRITE_PIECE + 5)
    with pytest.raises(InvalidInputError, match="announced"):
        await tools._write_atomically(_chunks(data), tmp_path / "cut.bin", False, len(data) + 1, 10 * len(data), quiet)
    with pytest.raises(TooLargeError, match="transfer limit"):
        await tools._write_atomically(_chunks(data), tmp_path / "big.bin", False, None, tools.WRITE_PIECE, quiet)
    assert list(tmp_path.iterdir()) == []
