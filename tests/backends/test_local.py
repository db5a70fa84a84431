"""The local backend on its own: demo data, paging, validation, atomic writes, search, concurrency."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import struct
import sys
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from pydantic import ValidationError

from crm_mcp._memory import MMAP_THRESHOLD
from crm_mcp.backends import _demo, local, vendor_class
from crm_mcp.backends.base import Backend, BackendContext, Download, FileEntry, Upload
from crm_mcp.backends.local import CHUNK_SIZE, SCHEMA_VERSION, LocalBackend, LocalSettings
from crm_mcp.errors import BackendError, InvalidInputError, NotFoundError, TooLargeError
from crm_mcp.sources import StreamDigest

pytestmark = pytest.mark.anyio

LIMIT = 1_000_000
MISSING = "6f1c2a4e-0000-4000-8000-000000000000"
PRINTER = _demo.CASE_PRINTER_ON_FIRE
WILSON = _demo.CONTACT_ALEXANDER_WILSON
BEST = _demo.CONTACT_JOHN_BEST
PNG = _demo.avatar_png()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def make(store: Path, *, demo: bool = True, limit: int = LIMIT, name: str = "local") -> LocalBackend:
    settings = LocalSettings(vendor="local", path=str(store), demo_data=demo)
    return LocalBackend(name, settings, BackendContext(home=store.parent / "home", max_transfer_bytes=limit))


@pytest.fixture
async def crm(store: Path) -> AsyncIterator[LocalBackend]:
    async with make(store) as backend:
        yield backend


# --------------------------------------------------------------------------------------- helpers


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def upload_of(
    data: bytes, name: str = "data.bin", mime: str = "application/octet-stream", *, size: int | None = None
) -> Upload:
    """An Upload of `data` in 10 kB chunks; `size` may lie about the length."""
    return Upload(name=name, mime_type=mime, size=len(data) if size is None else size, chunks=_chunks(data, 10_000))


def failing_upload(data: bytes, fail_after: int) -> Upload:
    async def chunks() -> AsyncIterator[bytes]:
        yield data[:fail_after]
        raise OSError("source broke off")

    return Upload(name="broken.bin", mime_type="application/octet-stream", size=len(data), chunks=chunks())


async def read_all(download: Download) -> bytes:
    return b"".join([chunk async for chunk in download.chunks])


async def all_files(crm: LocalBackend, case_id: str) -> list[FileEntry]:
    return (await crm.list_case_files(case_id, limit=1000, cursor=None)).files


def rows(store: Path, table: str) -> int:
    with sqlite3.connect(store / "crm.sqlite3") as conn:
        count: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return count


def on_disk(store: Path, folder: str) -> set[str]:
    return {path.name for path in (store / folder).iterdir()}


def snapshot(store: Path) -> tuple[int, int, set[str], set[str], set[str]]:
    """Everything a failed write could leave behind: rows, blobs and temporary files."""
    return (
        rows(store, "files"),
        rows(store, "photos"),
        on_disk(store, "files"),
        on_disk(store, "photos"),
        on_disk(store, "tmp"),
    )


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Parse a PNG, checking the signature and every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks.append((kind, body))
        offset += 12 + length
    return chunks


# ------------------------------------------------------------------------------------- demo data


async def test_printer_case_has_several_files_of_different_types(crm: LocalBackend) -> None:
    files = await all_files(crm, PRINTER)
    assert len(files) >= 4
    assert {"image/png", "application/pdf", "application/json"} <= {file.mime_type for file in files}


async def test_demo_files_read_back_with_their_listed_size(crm: LocalBackend) -> None:
    for file in await all_files(crm, PRINTER):
        async with crm.open_file(file.file_id) as download:
            assert (download.name, download.mime_type, download.size) == (file.name, file.mime_type, file.size)
            assert len(await read_all(download)) == file.size


async def test_alexander_wilson_has_a_small_png_photo(crm: LocalBackend) -> None:
    photo = await crm.get_contact_photo(WILSON)
    assert photo is not None and photo.mime_type == "image/png"
    async with crm.open_contact_photo(WILSON) as download:
        data = await read_all(download)
    assert len(data) == photo.size < 262_144
    assert png_chunks(data)[0][0] == b"IHDR"


async def test_john_best_has_no_photo(crm: LocalBackend) -> None:
    assert await crm.get_contact_photo(BEST) is None


async def test_maria_garcia_photo_is_too_big_to_inline(crm: LocalBackend) -> None:
    photo = await crm.get_contact_photo(_demo.CONTACT_MARIA_GARCIA)
    assert photo is not None and photo.size is not None and photo.size > 262_144


async def test_demo_ids_are_the_documented_ones(crm: LocalBackend) -> None:
    (case,) = await crm.find_records("case", "Printer on fire", limit=10)
    (contact,) = await crm.find_records("contact", "John Best", limit=10)
    assert (case.id, contact.id) == (PRINTER, BEST)
    assert _demo.demo_id("case:CS-1001") == PRINTER


def test_demo_png_decodes_to_its_declared_size() -> None:
    chunks = dict(png_chunks(_demo.printer_png()))
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (width, height, depth, colour) == (320, 240, 8, 2)
    assert len(zlib.decompress(chunks[b"IDAT"])) == (width * 3 + 1) * height
    assert b"IEND" in chunks


def test_demo_pdf_xref_points_at_each_object() -> None:
    pdf = _demo.simple_pdf("Title (with parentheses)", ["one line", "back\\slash"])
    assert pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
    startxref = int(re.search(rb"startxref\n(\d+)\n", pdf).group(1))  # type: ignore[union-attr]
    assert pdf[startxref:].startswith(b"xref\n0 6\n")
    offsets = re.findall(rb"(\d{10}) 00000 n \n", pdf[startxref:])
    for number, offset in enumerate(offsets, start=1):
        assert pdf[int(offset) :].startswith(b"%d 0 obj\n" % number)
    length = int(re.search(rb"/Length (\d+)", pdf).group(1))  # type: ignore[union-attr]
    stream = pdf[pdf.index(b"stream\n") + 7 :]
    assert stream[length:].startswith(b"\nendstream")


async def test_demo_data_false_gives_an_empty_store(store: Path) -> None:
    async with make(store, demo=False) as crm:
        assert await crm.find_records("case", "printer", limit=10) == []
        assert "0 cases, 0 contacts" in await crm.check()


async def test_seeding_is_not_repeated_on_reopen(store: Path) -> None:
    async with make(store) as crm:
        first = await crm.check()
        await crm.upload_attachment("case", PRINTER, upload_of(b"kept"))
    async with make(store) as crm:
        demo_files = [file for file in _demo.build_demo().files if file.record_id == PRINTER]
        assert len(await all_files(crm, PRINTER)) == len(demo_files) + 1
        assert (await crm.check()).split(", ")[:3] == first.split(", ")[:3]


async def test_two_instances_opening_together_seed_once(store: Path) -> None:
    first, second = make(store), make(store)
    async with anyio.create_task_group() as group:
        group.start_soon(first.__aenter__)
        group.start_soon(second.__aenter__)
    try:
        assert rows(store, "cases") == len(_demo.build_demo().cases)
        assert rows(store, "photos") == len(_demo.build_demo().photos)
    finally:
        await first.__aexit__(None, None, None)
        await second.__aexit__(None, None, None)


async def test_check_counts_the_records(crm: LocalBackend, store: Path) -> None:
    assert await crm.check() == (f"local store at {store}: 4 cases, 4 contacts, 3 accounts, 10 files, 2 photos")


# ---------------------------------------------------------------------------------------- paging


@pytest.mark.parametrize("limit", [1, 2, 3, 100])
async def test_paging_covers_every_file_exactly_once(crm: LocalBackend, limit: int) -> None:
    expected = [file.file_id for file in await all_files(crm, PRINTER)]
    seen: list[str] = []
    cursor = None
    while True:
        page = await crm.list_case_files(PRINTER, limit=limit, cursor=cursor)
        assert len(page.files) <= limit
        seen += [file.file_id for file in page.files]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected


async def test_files_are_ordered_by_time_then_name(crm: LocalBackend) -> None:
    files = await all_files(crm, PRINTER)
    assert [(file.created_at, file.name) for file in files] == sorted((file.created_at, file.name) for file in files)
    assert all(file.created_at is not None and file.created_at.utcoffset() is not None for file in files)
    assert {file.kind for file in files} == {"file"}


async def test_paging_is_stable_while_files_are_added(crm: LocalBackend) -> None:
    expected = [file.file_id for file in await all_files(crm, PRINTER)]
    page = await crm.list_case_files(PRINTER, limit=2, cursor=None)
    await crm.upload_attachment("case", PRINTER, upload_of(b"late", "zzz.txt", "text/plain"))
    rest = await crm.list_case_files(PRINTER, limit=100, cursor=page.next_cursor)
    assert [file.file_id for file in page.files + rest.files][: len(expected)] == expected


async def test_case_without_files_is_one_empty_page(crm: LocalBackend) -> None:
    page = await crm.list_case_files(_demo.CASE_PORTAL_LOGIN, limit=10, cursor=None)
    assert (page.files, page.next_cursor) == ([], None)


@pytest.mark.parametrize("cursor", ["bogus", "!!!", "", "WzEsMl0", "x" * 5000])
async def test_cursor_not_issued_here_is_refused(crm: LocalBackend, cursor: str) -> None:
    with pytest.raises(InvalidInputError, match="without a cursor"):
        await crm.list_case_files(PRINTER, limit=2, cursor=cursor)


async def test_cursor_of_another_case_is_refused(crm: LocalBackend) -> None:
    cursor = (await crm.list_case_files(_demo.CASE_INVOICE_VAT, limit=1, cursor=None)).next_cursor
    assert cursor is not None
    with pytest.raises(InvalidInputError, match="cursor"):
        await crm.list_case_files(PRINTER, limit=2, cursor=cursor)


# ------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("bad", ["CS-1001", "", "../../etc/passwd", "1234"])
async def test_malformed_ids_are_refused_before_any_io(store: Path, bad: str) -> None:
    crm = make(store)  # never opened: any I/O would fail with "not open" instead
    calls = [
        crm.list_case_files(bad, limit=1, cursor=None),
        crm.get_contact_photo(bad),
        crm.upload_attachment("case", bad, upload_of(b"x")),
        crm.upload_attachment("account", bad, upload_of(b"x")),
        crm.bind_photo(bad, upload_of(PNG, "a.png", "image/png")),
    ]
    for call in calls:
        with pytest.raises(InvalidInputError, match="not a valid id"):
            await call
    for opener in (crm.open_file, crm.open_contact_photo):
        with pytest.raises(InvalidInputError, match="not a valid id"):
            async with opener(bad):
                pass
    assert not store.exists()


async def test_missing_case_is_not_found_not_empty(crm: LocalBackend) -> None:
    with pytest.raises(NotFoundError, match=rf"case {MISSING} was not found.*find_records"):
        await crm.list_case_files(MISSING, limit=10, cursor=None)


async def test_missing_contact_is_not_found(crm: LocalBackend) -> None:
    with pytest.raises(NotFoundError, match=rf"contact {MISSING} was not found.*find_records"):
        await crm.get_contact_photo(MISSING)
    with pytest.raises(NotFoundError, match=r"contact .* was not found"):
        async with crm.open_contact_photo(MISSING):
            pass
    with pytest.raises(NotFoundError, match=r"contact .* was not found"):
        await crm.bind_photo(MISSING, upload_of(PNG, "a.png", "image/png"))


async def test_missing_file_is_not_found(crm: LocalBackend) -> None:
    with pytest.raises(NotFoundError, match=rf"file {MISSING} was not found"):
        async with crm.open_file(MISSING):
            pass


@pytest.mark.parametrize("record_type", ["case", "contact", "account"])
async def test_upload_to_missing_record_is_not_found_and_stores_nothing(
    crm: LocalBackend, store: Path, record_type: str
) -> None:
    before = snapshot(store)
    with pytest.raises(NotFoundError, match=f"{record_type} {MISSING} was not found"):
        await crm.upload_attachment(record_type, MISSING, upload_of(b"x"))  # type: ignore[arg-type]
    assert snapshot(store) == before


async def test_file_whose_bytes_vanished_is_a_clear_backend_error(crm: LocalBackend, store: Path) -> None:
    entry = await crm.upload_attachment("case", PRINTER, upload_of(b"soon gone"))
    (store / "files" / entry.file_id).unlink()
    with pytest.raises(BackendError, match="missing from the local store"):
        async with crm.open_file(entry.file_id):
            pass


async def test_contact_without_photo_cannot_be_opened(crm: LocalBackend) -> None:
    with pytest.raises(NotFoundError, match=f"contact {BEST} has no photo"):
        async with crm.open_contact_photo(BEST):
            pass


# --------------------------------------------------------------------------------------- uploads


async def test_upload_round_trips_bytes_size_and_hash(crm: LocalBackend, store: Path) -> None:
    payload = bytes(range(256)) * 1000
    entry = await crm.upload_attachment("case", PRINTER, upload_of(payload, "blob.bin"))
    assert (entry.name, entry.size, entry.kind) == ("blob.bin", len(payload), "file")
    assert entry.created_at is not None and entry.created_at.utcoffset() is not None
    async with crm.open_file(entry.file_id) as download:
        assert (download.name, download.mime_type, download.size) == ("blob.bin", "application/octet-stream", 256_000)
        chunks = [chunk async for chunk in download.chunks]
    assert b"".join(chunks) == payload
    with sqlite3.connect(store / "crm.sqlite3") as conn:
        (sha,) = conn.execute("SELECT sha256 FROM files WHERE file_id = ?", (entry.file_id,)).fetchone()
    assert sha == hashlib.sha256(payload).hexdigest()
    assert entry.file_id in [file.file_id for file in await all_files(crm, PRINTER)]


async def test_large_file_is_read_in_pieces_just_under_one_mib(store: Path) -> None:
    """Each read is a worker-thread round trip: ~1 MiB pieces keep them few, and memory stays one piece."""
    payload = os.urandom(2 * CHUNK_SIZE + 12_345)
    async with make(store, limit=10 * CHUNK_SIZE) as crm:
        entry = await crm.upload_attachment("case", PRINTER, upload_of(payload, "big.bin"))
        async with crm.open_file(entry.file_id) as download:
            sizes = [len(chunk) async for chunk in download.chunks]
    assert CHUNK_SIZE + 64 < MMAP_THRESHOLD  # 64: headers; a larger piece is mapped and unmapped per read
    assert sizes == [CHUNK_SIZE, CHUNK_SIZE, 12_345]


class _CountingHash:
    """A sha256 that counts the bytes fed to it, to tell one hash of an upload from two."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.fed = 0

    def update(self, data: bytes, /) -> None:
        self.fed += len(data)
        self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


async def test_upload_takes_over_the_tool_digest_and_hashes_each_byte_once(crm: LocalBackend, store: Path) -> None:
    payload = os.urandom(300_000)
    digest = StreamDigest()
    counting = _CountingHash()
    digest.hasher = counting  # type: ignore[assignment]
    upload = Upload("d.bin", "application/octet-stream", len(payload), digest.wrap(_chunks(payload, 10_000)))
    entry = await crm.upload_attachment("case", PRINTER, upload)
    with sqlite3.connect(store / "crm.sqlite3") as conn:
        (sha,) = conn.execute("SELECT sha256 FROM files WHERE file_id = ?", (entry.file_id,)).fetchone()
    assert sha == digest.hexdigest() == hashlib.sha256(payload).hexdigest()
    assert (digest.size, counting.fed) == (len(payload), len(payload))  # not 2x: the store hashed, the digest counted


async def test_a_disk_error_while_writing_is_a_backend_error_and_leaves_nothing(
    crm: LocalBackend, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer runs beside the source in a task group: its error must still arrive as itself."""
    real = local._Spool.write
    calls = 0

    def full(spool: local._Spool, chunk: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(28, "No space left on device")
        real(spool, chunk)

    monkeypatch.setattr(local._Spool, "write", full)
    before = snapshot(store)
    with pytest.raises(BackendError, match="No space left on device; nothing was stored"):
        await crm.upload_attachment("case", PRINTER, upload_of(b"q" * 50_000))
    assert snapshot(store) == before


async def test_the_source_reads_the_next_piece_while_the_store_writes(
    crm: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Overlap with a bound: at most two pieces between the source and the disk, whatever the size."""
    written = 0
    in_flight: list[int] = []
    real = local._Spool.write

    def slow(spool: local._Spool, chunk: bytes) -> None:
        nonlocal written
        time.sleep(0.002)
        real(spool, chunk)
        written += 1

    async def chunks() -> AsyncIterator[bytes]:
        for produced in range(1, 21):
            in_flight.append(produced - written)
            yield b"p" * 1000

    monkeypatch.setattr(local._Spool, "write", slow)
    await crm.upload_attachment("case", PRINTER, Upload("p.bin", "application/octet-stream", 20_000, chunks()))
    assert max(in_flight) == 2


@pytest.mark.parametrize(("record_type", "record_id"), [("contact", WILSON), ("account", _demo.ACCOUNT_CONTOSO)])
async def test_upload_to_contact_and_account(crm: LocalBackend, record_type: str, record_id: str) -> None:
    entry = await crm.upload_attachment(record_type, record_id, upload_of(b"hello", "h.txt", "text/plain"))  # type: ignore[arg-type]
    async with crm.open_file(entry.file_id) as download:
        assert await read_all(download) == b"hello"


async def test_empty_upload_is_stored(crm: LocalBackend) -> None:
    entry = await crm.upload_attachment("case", PRINTER, upload_of(b"", "empty.txt", "text/plain"))
    async with crm.open_file(entry.file_id) as download:
        assert (download.size, await read_all(download)) == (0, b"")


async def test_declared_size_over_the_limit_is_refused_before_reading(store: Path) -> None:
    started = False

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal started
        started = True
        yield b"x"

    async with make(store, limit=100) as crm:
        before = snapshot(store)
        with pytest.raises(TooLargeError, match=r"limits\.max_transfer_bytes"):
            await crm.upload_attachment("case", PRINTER, Upload("big.bin", "application/octet-stream", 101, chunks()))
        assert not started
        assert snapshot(store) == before


async def test_stream_growing_past_the_limit_is_stopped(store: Path) -> None:
    async with make(store, limit=25_000) as crm:
        before = snapshot(store)
        with pytest.raises(TooLargeError):
            await crm.upload_attachment("case", PRINTER, upload_of(b"x" * 40_000, size=25_000))
        assert snapshot(store) == before


async def test_stream_failing_midway_leaves_no_row_and_no_file(crm: LocalBackend, store: Path) -> None:
    before = snapshot(store)
    with pytest.raises(OSError, match="broke off"):
        await crm.upload_attachment("case", PRINTER, failing_upload(b"y" * 50_000, 20_000))
    assert snapshot(store) == before


@pytest.mark.parametrize("declared", [49_999, 50_001, 1])
async def test_size_mismatch_is_refused_and_stores_nothing(crm: LocalBackend, store: Path, declared: int) -> None:
    before = snapshot(store)
    with pytest.raises(BackendError, match="nothing was stored"):
        await crm.upload_attachment("case", PRINTER, upload_of(b"z" * 50_000, size=declared))
    assert snapshot(store) == before


async def test_cancelled_upload_leaves_nothing(crm: LocalBackend, store: Path) -> None:
    before = snapshot(store)

    async def stalls() -> AsyncIterator[bytes]:
        yield b"a" * 1000
        await anyio.sleep_forever()
        yield b""

    with anyio.move_on_after(0.2):
        await crm.upload_attachment("case", PRINTER, Upload("slow.bin", "application/octet-stream", 5000, stalls()))
    assert snapshot(store) == before


async def test_concurrent_uploads_are_all_listed(crm: LocalBackend) -> None:
    before = len(await all_files(crm, PRINTER))
    payloads = {f"part-{n:02d}.txt": f"part {n}".encode() * (n + 1) for n in range(20)}

    async def send(name: str, data: bytes) -> None:
        await crm.upload_attachment("case", PRINTER, upload_of(data, name, "text/plain"))

    async with anyio.create_task_group() as group:
        for name, data in payloads.items():
            group.start_soon(send, name, data)
    files = await all_files(crm, PRINTER)
    assert len(files) == before + 20
    for file in files:
        if file.name in payloads:
            async with crm.open_file(file.file_id) as download:
                assert await read_all(download) == payloads[file.name]


async def test_a_second_instance_sees_the_first_ones_uploads(store: Path) -> None:
    async with make(store) as first, make(store) as second:
        entry = await first.upload_attachment("case", PRINTER, upload_of(b"shared", "s.txt", "text/plain"))
        assert entry.file_id in [file.file_id for file in await all_files(second, PRINTER)]
        async with second.open_file(entry.file_id) as download:
            assert await read_all(download) == b"shared"
        await second.bind_photo(BEST, upload_of(PNG, "best.png", "image/png"))
        assert await first.get_contact_photo(BEST) is not None


# ---------------------------------------------------------------------------------------- photos


async def test_bind_photo_replaces_the_old_one_and_removes_its_bytes(crm: LocalBackend, store: Path) -> None:
    old = await crm.get_contact_photo(WILSON)
    assert old is not None
    new_png = _demo.printer_png()
    photo = await crm.bind_photo(WILSON, upload_of(new_png, "new.png", "image/png"))
    assert photo.photo_id != old.photo_id and photo.size == len(new_png)
    assert await crm.get_contact_photo(WILSON) == photo
    async with crm.open_contact_photo(WILSON) as download:
        assert (download.mime_type, await read_all(download)) == ("image/png", new_png)
    assert old.photo_id not in on_disk(store, "photos")
    assert rows(store, "photos") == 2


async def test_binding_the_same_image_twice_keeps_one_photo(crm: LocalBackend, store: Path) -> None:
    first = await crm.bind_photo(BEST, upload_of(PNG, "a.png", "image/png"))
    second = await crm.bind_photo(BEST, upload_of(PNG, "a.png", "image/png"))
    assert second == first == await crm.get_contact_photo(BEST)
    assert rows(store, "photos") == 3
    assert len(on_disk(store, "photos")) == 3


async def test_non_image_photo_is_refused_and_the_old_one_stays(crm: LocalBackend, store: Path) -> None:
    before, files = await crm.get_contact_photo(WILSON), snapshot(store)
    with pytest.raises(InvalidInputError, match="only images can be contact photos"):
        await crm.bind_photo(WILSON, upload_of(b"plain text", "x.txt", "text/plain"))
    assert await crm.get_contact_photo(WILSON) == before
    assert snapshot(store) == files


async def test_failed_photo_upload_keeps_the_old_photo(crm: LocalBackend, store: Path) -> None:
    before, files = await crm.get_contact_photo(WILSON), snapshot(store)
    broken = failing_upload(PNG, 100)
    broken.mime_type = "image/png"
    with pytest.raises(OSError, match="broke off"):
        await crm.bind_photo(WILSON, broken)
    assert await crm.get_contact_photo(WILSON) == before
    assert snapshot(store) == files


# ------------------------------------------------------------------------------------------ find


@pytest.mark.parametrize(
    "query", ["alexander wilson", "ALEXANDER", "wilson", "Wilson Alexander", "  alexander   wilson "]
)
async def test_find_contact_by_name(crm: LocalBackend, query: str) -> None:
    records = await crm.find_records("contact", query, limit=10)
    assert [(record.id, record.title, record.record_type) for record in records] == [
        (WILSON, "Alexander Wilson", "contact")
    ]


async def test_find_case_by_number_is_exact_and_case_insensitive(crm: LocalBackend) -> None:
    records = await crm.find_records("case", "cs-1001", limit=10)
    assert [(record.id, record.title) for record in records] == [(PRINTER, "CS-1001 · Printer on fire")]
    assert await crm.find_records("case", "cs-100", limit=10) == []


async def test_find_case_by_subject_substring(crm: LocalBackend) -> None:
    titles = [record.title for record in await crm.find_records("case", "PRINTER", limit=10)]
    assert titles == ["CS-1001 · Printer on fire", "CS-1004 · Toner reorder for the 3rd floor printer"]


async def test_find_respects_the_limit(crm: LocalBackend) -> None:
    assert len(await crm.find_records("contact", "e", limit=2)) == 2


@pytest.mark.parametrize("query", ["%", "_", "\\", "%%", "a%", "_ilson"])
async def test_like_wildcards_in_the_query_are_literal(crm: LocalBackend, query: str) -> None:
    assert await crm.find_records("contact", query, limit=10) == []
    assert await crm.find_records("case", query, limit=10) == []


async def test_find_without_match_is_empty(crm: LocalBackend) -> None:
    assert await crm.find_records("contact", "Zebulon Quux", limit=10) == []


@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
async def test_blank_query_is_refused(crm: LocalBackend, query: str) -> None:
    with pytest.raises(InvalidInputError, match="query is empty"):
        await crm.find_records("case", query, limit=10)


# -------------------------------------------------------------------------------- store and setup


async def test_a_path_that_cannot_be_a_folder_fails_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(BackendError, match="cannot open the local store"):
        async with make(blocker / "store"):
            pass


async def test_a_newer_schema_is_refused_not_damaged(store: Path) -> None:
    async with make(store):
        pass
    with sqlite3.connect(store / "crm.sqlite3") as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(BackendError, match="newer than this crm-mcp"):
        async with make(store):
            pass


async def test_stale_temp_files_are_swept_on_open_and_fresh_ones_kept(store: Path) -> None:
    async with make(store):
        pass
    stale, fresh = store / "tmp" / "upload-old.part", store / "tmp" / "upload-new.part"
    stale.write_bytes(b"crashed")
    fresh.write_bytes(b"in flight")
    os.utime(stale, (0, 0))
    async with make(store):
        assert on_disk(store, "tmp") == {"upload-new.part"}


async def test_store_uses_wal_and_records_its_schema_version(crm: LocalBackend, store: Path) -> None:
    with sqlite3.connect(store / "crm.sqlite3") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_default_store_is_home_slash_name(tmp_path: Path) -> None:
    backend = LocalBackend("mine", LocalSettings(vendor="local"), BackendContext(home=tmp_path, max_transfer_bytes=1))
    assert backend.path == tmp_path / "mine"


def test_tilde_in_path_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    backend = LocalBackend("x", LocalSettings(vendor="local", path="~/crm"), BackendContext(tmp_path, 1))
    assert backend.path == tmp_path / "crm"


def test_relative_path_is_inside_the_home_not_the_working_directory(tmp_path: Path) -> None:
    backend = LocalBackend("x", LocalSettings(vendor="local", path="stores/a"), BackendContext(tmp_path, 1))
    assert backend.path == tmp_path / "stores" / "a"


def test_absolute_path_is_kept(tmp_path: Path) -> None:
    backend = LocalBackend("x", LocalSettings(vendor="local", path=str(tmp_path / "s")), BackendContext(Path("/h"), 1))
    assert backend.path == tmp_path / "s"


def test_settings_refuse_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        LocalSettings.model_validate({"vendor": "local", "colour": "red"})


def test_registered_and_satisfies_the_protocol(tmp_path: Path) -> None:
    assert vendor_class("local") is LocalBackend
    backend = make(tmp_path / "s")
    assert isinstance(backend, Backend)
    capabilities = backend.capabilities
    assert capabilities.upload_record_types == ["case", "contact", "account"]
    assert capabilities.contact_photos and capabilities.bind_photo
    assert capabilities.find_record_types == ["case", "contact"]
    assert capabilities.id_format.startswith("GUID")


_CHILD = """
import sys, anyio
from pathlib import Path
from tests.backends.test_local import PRINTER, make, upload_of

async def main() -> None:
    async with make(Path(sys.argv[1])) as crm:
        await crm.upload_attachment("case", PRINTER, upload_of(sys.argv[2].encode(), sys.argv[2], "text/plain"))

anyio.run(main)
"""


async def test_processes_starting_together_seed_once_and_see_each_others_uploads(store: Path) -> None:
    names = [f"from-process-{n}.txt" for n in range(3)]
    root = Path(__file__).resolve().parents[2]

    async def child(name: str) -> None:
        done = await anyio.run_process([sys.executable, "-c", _CHILD, str(store), name], cwd=root, check=False)
        assert done.returncode == 0, done.stderr.decode()

    async with anyio.create_task_group() as group:
        for name in names:
            group.start_soon(child, name)
    async with make(store) as crm:
        files = await all_files(crm, PRINTER)
        assert rows(store, "cases") == len(_demo.build_demo().cases)
    assert sorted(file.name for file in files if file.name.startswith("from-process-")) == names
