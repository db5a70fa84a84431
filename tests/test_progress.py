"""Progress notifications are throttled but never drop the final one, and every transfer sends them
(bytes done / total) when the client asked with a progress token."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.types import ReadResourceRequest, ReadResourceRequestParams, ReadResourceResult

from crm_mcp.backends import _demo as demo
from crm_mcp.config import Settings
from crm_mcp.progress import ThrottledProgress
from crm_mcp.server import build_server
from tests.helpers import ok

pytestmark = pytest.mark.anyio


class _RecordingContext:
    def __init__(self) -> None:
        self.reports: list[tuple[float, float | None, str | None]] = []

    async def report_progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        self.reports.append((progress, total, message))


async def test_many_small_steps_send_few_notifications_and_the_last() -> None:
    ctx = _RecordingContext()
    progress = ThrottledProgress(ctx, "uploaded")  # type: ignore[arg-type]
    for done in range(1, 1001):
        await progress(done, 1000)
    assert len(ctx.reports) < 10
    assert ctx.reports[-1] == (1000, 1000, "uploaded 1,000 of 1,000 bytes")


async def test_unknown_total_is_reported_without_one() -> None:
    ctx: Any = _RecordingContext()
    await ThrottledProgress(ctx, "read")(5, None)
    assert ctx.reports == [(5, None, "read 5 bytes")]


# ------------------------------------------------- over MCP: every transfer reports bytes done / total

SIZE = 3 * 1024 * 1024 + 17


@pytest.fixture
def big_file(files_root: Path) -> bytes:
    data = (bytes(range(256)) * (SIZE // 256 + 1))[:SIZE]
    (files_root / "big.bin").write_bytes(data)
    return data


class _Updates:
    """A client's progress callback that keeps what it was told."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float | None, str | None]] = []

    async def __call__(self, done: float, total: float | None, message: str | None) -> None:
        self.seen.append((done, total, message))

    def check(self, size: int, verb: str) -> None:
        assert self.seen, "no progress notification arrived"
        dones = [done for done, _, _ in self.seen]
        assert dones == sorted(dones) and dones[-1] == size
        assert {total for _, total, _ in self.seen} == {size}
        assert self.seen[-1][2] == f"{verb} {size:,} of {size:,} bytes"


async def _stored(client: Client) -> str:
    entry = await ok(client, "upload_attachment", record_id=demo.CASE_PRINTER_ON_FIRE, file_name="b", path="big.bin")
    return str(entry["resource_uri"])


async def test_upload_attachment_reports_progress(client: Client, big_file: bytes) -> None:
    updates = _Updates()
    arguments = {"record_id": demo.CASE_PRINTER_ON_FIRE, "file_name": "big.bin", "path": "big.bin"}
    result = await client.call_tool("upload_attachment", arguments, progress_callback=updates)
    assert not result.is_error
    updates.check(len(big_file), "uploaded")


async def test_bind_photo_reports_progress(client: Client, files_root: Path) -> None:
    image = b"\x89PNG\r\n\x1a\n" + bytes(SIZE)
    (files_root / "photo.png").write_bytes(image)
    updates = _Updates()
    arguments = {"contact_id": demo.CONTACT_JOHN_BEST, "path": "photo.png"}
    assert not (await client.call_tool("bind_photo", arguments, progress_callback=updates)).is_error
    updates.check(len(image), "uploaded")


async def test_save_file_reports_progress(client: Client, big_file: bytes) -> None:
    uri = await _stored(client)
    updates = _Updates()
    arguments = {"resource_uri": uri, "path": "copy.bin"}
    assert not (await client.call_tool("save_file", arguments, progress_callback=updates)).is_error
    updates.check(len(big_file), "saved")


async def test_read_file_reports_progress(make_settings: Callable[..., Settings], files_root: Path) -> None:
    text = "line of text\n" * 400_000  # 5.2 MB: read_file allows up to 8 MiB when configured so
    (files_root / "notes.txt").write_text(text)
    settings = make_settings("[limits]\ninline_text_bytes = 8388608\n")
    async with Client(build_server(settings)) as client:
        entry = await ok(
            client, "upload_attachment", record_id=demo.CASE_PRINTER_ON_FIRE, file_name="n.txt", path="notes.txt"
        )
        updates = _Updates()
        result = await client.call_tool("read_file", {"resource_uri": entry["resource_uri"]}, progress_callback=updates)
        assert not result.is_error
    updates.check(len(text), "read")


async def test_resources_read_reports_progress(client: Client, big_file: bytes) -> None:
    uri = await _stored(client)
    updates = _Updates()
    request = ReadResourceRequest(params=ReadResourceRequestParams(uri=uri))
    result = await client.session.send_request(request, ReadResourceResult, progress_callback=updates)
    (content,) = result.contents
    assert base64.b64decode(content.blob) == big_file
    updates.check(len(big_file), "read")
