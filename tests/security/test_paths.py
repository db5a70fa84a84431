"""Local paths through the tools: `..`, symlinks out of the roots, absolute paths elsewhere, device
files, FIFOs and folders are refused with a clear error — for upload sources and for save_file —
and nothing is read from or written to the place they point at."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from mcp import Client

from crm_mcp.backends import _demo as demo
from crm_mcp.config import Settings
from crm_mcp.server import build_server
from tests.helpers import all_files, error, ok

pytestmark = pytest.mark.anyio

CASE = demo.CASE_PRINTER_ON_FIRE
FILE_URI = f"crm://local/files/{demo.demo_id('file:CS-1002/vat-calculation.csv')}"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to files.roots, with a file the server must never read or replace."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("do not read")
    return folder


@pytest.fixture
def layout(files_root: Path, outside: Path) -> Path:
    (files_root / "link-out.txt").symlink_to(outside / "secret.txt")
    (files_root / "folder-out").symlink_to(outside, target_is_directory=True)
    (files_root / "zero").symlink_to("/dev/zero")
    os.mkfifo(files_root / "pipe")
    (files_root / "sub").mkdir()
    (files_root / "inside.txt").write_text("fine")
    (files_root / "link-in.txt").symlink_to(files_root / "inside.txt")
    return files_root


READS = {
    "dotdot": ("../outside/secret.txt", "outside the folders this server may read"),
    "symlink out": ("link-out.txt", "outside the folders this server may read"),
    "symlinked folder out": ("folder-out/secret.txt", "outside the folders this server may read"),
    "absolute elsewhere": ("{outside}/secret.txt", "outside the folders this server may read"),
    "absolute system file": ("/etc/hostname", "outside the folders this server may read"),
    "device": ("/dev/zero", "outside the folders this server may read"),
    "device via symlink in the root": ("zero", "outside the folders this server may read"),
    "fifo in the root": ("pipe", "not a regular file"),
    "folder": ("sub", "is a folder"),
}


@pytest.mark.parametrize("case", sorted(READS))
async def test_upload_from_a_refused_path_reads_nothing(
    case: str, layout: Path, outside: Path, settings: Settings
) -> None:
    path, expected = READS[case]
    async with Client(build_server(settings)) as client:
        before = await all_files(client, CASE)
        with anyio.fail_after(10):  # opening the FIFO or /dev/zero would hang or never end
            message = await error(
                client, "upload_attachment", record_id=CASE, file_name="x.txt", path=path.format(outside=outside)
            )
        assert expected in message
        assert await all_files(client, CASE) == before


WRITES = {
    "dotdot": ("../outside/new.csv", "outside the folders this server may write"),
    "dotdot onto an existing file": ("../outside/secret.txt", "outside the folders this server may write"),
    "symlink out": ("link-out.txt", "symbolic link"),
    "symlink in": ("link-in.txt", "symbolic link"),
    "symlinked folder out": ("folder-out/new.csv", "outside the folders this server may write"),
    "absolute elsewhere": ("{outside}/new.csv", "outside the folders this server may write"),
    "device": ("/dev/null", "outside the folders this server may write"),
    "device via symlink in the root": ("zero", "symbolic link"),
    "fifo in the root": ("pipe", "not a regular file"),
}


@pytest.mark.parametrize("case", sorted(WRITES))
async def test_save_to_a_refused_path_writes_nothing(
    case: str, layout: Path, outside: Path, make_settings: Callable[..., Settings]
) -> None:
    path, expected = WRITES[case]
    before = {item: item.stat().st_mtime_ns for item in [*layout.rglob("*"), *outside.rglob("*")] if item.is_file()}
    async with Client(build_server(make_settings())) as client:
        with anyio.fail_after(10):
            message = await error(
                client, "save_file", resource_uri=FILE_URI, path=path.format(outside=outside), overwrite=True
            )
    assert expected in message
    assert (outside / "secret.txt").read_text() == "do not read"
    assert not (outside / "new.csv").exists()
    after = {item: item.stat().st_mtime_ns for item in [*layout.rglob("*"), *outside.rglob("*")] if item.is_file()}
    assert after == before  # no new, changed or left-over temporary file anywhere


async def test_a_refused_save_path_is_refused_before_the_crm_is_asked(
    layout: Path, outside: Path, make_settings: Callable[..., Settings]
) -> None:
    # The file does not exist: were the CRM asked first, the error would be "not found".
    missing = FILE_URI.rsplit("/", 1)[0] + "/no-such-file"
    async with Client(build_server(make_settings())) as client:
        message = await error(client, "save_file", resource_uri=missing, path=f"{outside}/new.csv")
    assert "outside the folders this server may write" in message
    assert "not found" not in message


async def test_save_into_a_folder_uses_the_file_name_and_stays_inside(layout: Path, settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        saved = await ok(client, "save_file", resource_uri=FILE_URI, path="sub")
    assert Path(saved["path"]) == layout / "sub" / "vat-calculation.csv"
