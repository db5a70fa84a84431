"""`save_file`'s writer (`tools._write_atomically`): small chunks are gathered into 1 MiB writes, and the
file, its hash, its size and the progress reports stay exactly those of the chunks received."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crm_mcp import tools
from crm_mcp._memory import MMAP_THRESHOLD
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
    assert len(recorder.writes) == 4 and sum(recorder.writes) == len(data)  # not one write per 48 KiB chunk (64)
    assert all(tools.WRITE_PIECE - CHUNK < n <= tools.WRITE_PIECE for n in recorder.writes[:-1])
    assert len(reports) == -(-len(data) // CHUNK) and reports[-1] == (len(data), len(data))  # still per chunk
    assert [p.name for p in tmp_path.iterdir()] == ["big.bin"]


async def test_pieces_stay_under_the_size_glibc_maps_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stdio server maps every block of MMAP_THRESHOLD or more on its own: a piece that size would be
    mapped, faulted in page by page and unmapped for every write. The store's own pieces pass unjoined."""
    recorder = _Recorder(monkeypatch)
    data = os.urandom(3 * tools.WRITE_PIECE)
    await tools._write_atomically(
        _chunks(data, tools.WRITE_PIECE), tmp_path / "s.bin", False, len(data), 10 * len(data), _quiet
    )
    assert recorder.writes == [tools.WRITE_PIECE] * 3
    assert tools.WRITE_PIECE + 64 < MMAP_THRESHOLD  # 64: the bytes object's and malloc's headers


async def test_a_short_transfer_leaves_nothing_behind(tmp_path: Path) -> None:
    async def quiet(done: int, total: int | None) -> None:
        return None

    data = os.urandom(tools.WRITE_PIECE + 5)
    with pytest.raises(InvalidInputError, match="announced"):
        await tools._write_atomically(_chunks(data), tmp_path / "cut.bin", False, len(data) + 1, 10 * len(data), quiet)
    with pytest.raises(TooLargeError, match="transfer limit"):
        await tools._write_atomically(_chunks(data), tmp_path / "big.bin", False, None, tools.WRITE_PIECE, quiet)
    assert list(tmp_path.iterdir()) == []


async def test_the_next_piece_is_read_while_the_last_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Overlap with a bound: never more than two pieces between the CRM and the disk."""
    written = 0
    in_flight: list[int] = []
    real = tools._HashedFile.write

    def slow(sink: tools._HashedFile, piece: bytes) -> None:
        nonlocal written
        time.sleep(0.002)
        real(sink, piece)
        written += 1

    async def pieces() -> AsyncIterator[bytes]:
        for produced in range(1, 11):
            in_flight.append(produced - written)
            yield b"w" * tools.WRITE_PIECE

    monkeypatch.setattr(tools._HashedFile, "write", slow)
    size, _ = await tools._write_atomically(pieces(), tmp_path / "w.bin", False, None, 20 * tools.WRITE_PIECE, _quiet)
    assert size == 10 * tools.WRITE_PIECE
    assert max(in_flight) == 2


async def test_the_chunk_past_the_limit_is_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = _Recorder(monkeypatch)
    data = os.urandom(3 * tools.WRITE_PIECE)
    with pytest.raises(TooLargeError, match="transfer limit"):
        await tools._write_atomically(
            _chunks(data, tools.WRITE_PIECE), tmp_path / "big.bin", False, None, 2 * tools.WRITE_PIECE + 1, _quiet
        )
    assert sum(recorder.writes) <= 2 * tools.WRITE_PIECE
    assert list(tmp_path.iterdir()) == []


async def test_a_disk_error_arrives_as_itself_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer runs beside the reader in a task group; its error must not become an ExceptionGroup."""

    def full(sink: tools._HashedFile, piece: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tools._HashedFile, "write", full)
    data = os.urandom(2 * tools.WRITE_PIECE)
    with pytest.raises(OSError, match="No space left"):
        await tools._write_atomically(_chunks(data), tmp_path / "f.bin", False, len(data), 10 * len(data), _quiet)
    assert list(tmp_path.iterdir()) == []


async def _quiet(done: int, total: int | None) -> None:
    return None
