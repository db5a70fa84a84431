"""One backend under test: its configuration file, an in-process copy of the backend for seeding
and recording, and the ids the cases use.

The data is seeded through crm-mcp's own backend API, so every vendor gets the same shape: the
contract data set's case "Printer on fire" topped up to at least 50 files, plus one random file of
the download size. The in-process backend talks to the simulator over the same loopback socket as
the server under test, through a `RecordingTransport`, so its requests can be replayed as baselines.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

from benchmarks.recording import Exchange, RecordingTransport
from benchmarks.rpc import child_env
from benchmarks.simulators import RunningSimulator
from crm_mcp.app import build_backends
from crm_mcp.backends.base import Backend, FileEntry, Upload
from crm_mcp.config import load_settings

__all__ = [
    "CASE_QUERY",
    "LISTED_FILES",
    "Workspace",
    "file_chunks",
    "open_workspace",
    "random_file",
    "server_argv",
    "top_up_files",
]

CASE_QUERY = "Printer on fire"
LISTED_FILES = 50
PIECE = 1024 * 1024


@dataclass
class Workspace:
    name: str
    """Backend name in the configuration (the vendor's name, or "local")."""
    scratch: Path
    config: Path
    files_root: Path
    backend: Backend
    recorder: RecordingTransport
    simulator: RunningSimulator | None
    case_id: str = ""

    @property
    def env(self) -> dict[str, str]:
        return child_env({"CRM_MCP_HOME": str(self.scratch / "home")})

    @property
    def store(self) -> Path:
        """The local backend's store folder (local only)."""
        return self.scratch / "store"

    def uri(self, file_id: str) -> str:
        return f"crm://{self.name}/files/{file_id}"

    async def upload(self, name: str, path: Path, mime: str = "application/octet-stream") -> FileEntry:
        size = (await anyio.Path(path).stat()).st_size
        upload = Upload(name=name, mime_type=mime, size=size, chunks=file_chunks(path))
        return await self.backend.upload_attachment("case", self.case_id, upload)

    async def recorded_listing(self) -> list[Exchange]:
        self.recorder.start()
        await self.backend.list_case_files(self.case_id, limit=LISTED_FILES, cursor=None)
        return self.recorder.stop()

    async def recorded_download(self, file_id: str) -> tuple[list[Exchange], int]:
        size = 0
        self.recorder.start()
        async with self.backend.open_file(file_id) as download:
            async for chunk in download.chunks:
                size += len(chunk)
        return self.recorder.stop(), size

    async def recorded_upload(self, name: str, path: Path) -> tuple[list[Exchange], FileEntry]:
        self.recorder.start()
        try:
            entry = await self.upload(name, path)
        finally:
            exchanges = self.recorder.stop()
        return exchanges, entry


def server_argv(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "crm_mcp", "serve", "--config", str(config), *extra]


def write_config(scratch: Path, backend_toml: str, max_transfer: int) -> tuple[Path, Path]:
    files_root = scratch / "files"
    files_root.mkdir(parents=True, exist_ok=True)
    config = scratch / "crm-mcp.toml"
    config.write_text(
        f'[limits]\nmax_transfer_bytes = {max_transfer}\n\n[files]\nroots = ["{files_root}"]\n\n{backend_toml}',
        encoding="utf-8",
    )
    return config, files_root


@asynccontextmanager
async def open_workspace(
    name: str, scratch: Path, simulator: RunningSimulator | None, max_transfer: int
) -> AsyncIterator[Workspace]:
    await anyio.Path(scratch).mkdir(parents=True, exist_ok=True)
    toml = simulator.toml if simulator else f'[backends.local]\nvendor = "local"\npath = "{scratch / "store"}"\n'
    config, files_root = write_config(scratch, toml, max_transfer)
    settings = load_settings(str(config), env={**os.environ, "CRM_MCP_HOME": str(scratch / "home")})
    spool = scratch / "spool"
    spool.mkdir(exist_ok=True)
    recorder = RecordingTransport(spool)
    backend = build_backends(settings, transport=recorder if simulator else None)[name]
    async with backend:
        workspace = Workspace(name, scratch, config, files_root, backend, recorder, simulator)
        records = await backend.find_records("case", CASE_QUERY, limit=5)
        if not records:
            raise RuntimeError(f"{name}: no case matches {CASE_QUERY!r}; the seeded data changed")
        workspace.case_id = records[0].id
        try:
            yield workspace
        finally:
            await recorder.aclose()


async def top_up_files(workspace: Workspace) -> int:
    """Attach small text files until the case lists at least `LISTED_FILES`; returns how many it has."""
    count = await _count_files(workspace)
    note = workspace.scratch / "note.txt"
    for number in range(count, LISTED_FILES):
        note.write_bytes(f"benchmark note {number}\n".encode() * 40)
        await workspace.upload(f"note-{number:02d}.txt", note, "text/plain")
    return await _count_files(workspace)


async def _count_files(workspace: Workspace) -> int:
    count, cursor = 0, None
    while True:
        page = await workspace.backend.list_case_files(workspace.case_id, limit=200, cursor=cursor)
        count += len(page.files)
        cursor = page.next_cursor
        if not cursor:
            return count


def random_file(path: Path, size: int) -> Path:
    """`size` random bytes (incompressible, as photos and archives are) in `path`, written once."""
    if path.exists() and path.stat().st_size == size:
        return path
    with path.open("wb") as file:
        left = size
        while left:
            step = min(PIECE, left)
            file.write(os.urandom(step))
            left -= step
    return path


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as file:
        while chunk := await file.read(PIECE):
            yield chunk
