"""A cancelled transfer leaves nothing behind: no partial file, no temp file, no orphan CRM record.

The transfer is caught mid-way on purpose: uploads read from a URL source on loopback that sends part
of its body and then stalls (a slow download), saves from a CRM that stalls the same way; the client
cancels once progress shows bytes moving. Cancellation arrives both ways a client can send it: the
in-process client's own cancellation (modern "auto" mode) and a JSON-RPC `notifications/cancelled`
(legacy mode, over streams). "Nothing behind" is judged from the outside: the CRM simulator's
inventory of everything it stores, the local store's rows and folders, the destination folder.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
import pytest
from anyio.abc import SocketStream
from mcp import Client

from crm_mcp.backends import _demo as demo
from crm_mcp.backends.base import Download
from crm_mcp.backends.local import LocalBackend
from crm_mcp.config import Settings
from crm_mcp.server import build_server
from tests.faults.targets import TARGETS
from tests.helpers import find_one, ok

pytestmark = pytest.mark.anyio

PAYLOAD_SIZE = 2 * 1024 * 1024
SENT_BEFORE_STALL = 600 * 1024
Mode = Literal["auto", "legacy"]


@dataclass
class _Stall:
    url: str
    closed: anyio.Event
    """Set when crm-mcp closed its connection to the source (the transfer is torn down; its clean-up
    may still be running)."""


@asynccontextmanager
async def stalling_source(payload: bytes, sent: int) -> AsyncIterator[_Stall]:
    """An HTTP server on loopback that announces `payload` and sends only its first `sent` bytes."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.listeners[0].extra(anyio.abc.SocketAttribute.local_port)
    closed = anyio.Event()

    async def handle(stream: SocketStream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive()
            head = (
                f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len(payload)}\r\n\r\n"
            )
            await stream.send(head.encode() + payload[:sent])
            try:
                while True:
                    await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                closed.set()

    async with anyio.create_task_group() as group:
        group.start_soon(listener.serve, handle)
        yield _Stall(f"http://127.0.0.1:{port}/big.bin", closed)
        group.cancel_scope.cancel()


async def cancel_mid_transfer(client: Client, tool: str, arguments: dict[str, Any]) -> None:
    """Call `tool`, and cancel the call as soon as progress shows bytes moving."""
    moving = anyio.Event()

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        if done > 0:
            moving.set()

    finished: list[Any] = []

    async def run() -> None:
        finished.append(await client.call_tool(tool, arguments, progress_callback=on_progress))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            await moving.wait()
            group.cancel_scope.cancel()
    assert finished == [], f"{tool} finished although its transfer stalled: {finished}"


async def settled(measure: Callable[[], Any], expected: Any) -> Any:
    """What `measure()` returns once it equals `expected` (clean-up runs after the transfer is torn
    down, in the server's own task), or after 10 s whatever it is then; measured again after a pause,
    so a state that only passes by for a moment does not count."""
    with anyio.move_on_after(10):
        while measure() != expected:  # noqa: ASYNC110 -- polls the CRM's state, which has no event
            await anyio.sleep(0.02)
    await anyio.sleep(0.2)
    return measure()


def _toml(backend_toml: str, files_root: Path) -> str:
    return f'{backend_toml}\n[files]\nroots = ["{files_root}"]\nallow_private_urls = true\n'


def _local_inventory(home: Path) -> Counter[str]:
    store = home / "local"
    with sqlite3.connect(store / "crm.sqlite3") as conn:
        files = conn.execute("SELECT count(*) FROM files").fetchone()[0]
        photos = conn.execute("SELECT count(*) FROM photos").fetchone()[0]
    return Counter(
        {
            "file rows": files,
            "photo rows": photos,
            "stored files": len(list((store / "files").iterdir())),
            "stored photos": len(list((store / "photos").iterdir())),
            "temporary files": len(list((store / "tmp").iterdir())),
        }
    )


@dataclass
class _Crm:
    """A backend under test, and how to count what it stores."""

    name: str
    settings: Settings
    inventory: Callable[[], Counter[str]]
    transport: httpx.AsyncBaseTransport | None = None
    leftovers: Callable[[], int] = lambda: 0
    """Records the vendor's API cannot delete, invisible to every listing (see tests/faults/targets.py)."""


@pytest.fixture(params=["local", "creatio", "wello", "espocrm", "superoffice"])
def crm(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings], files_root: Path, tmp_path: Path
) -> _Crm:
    name: str = request.param
    if name == "local":
        settings = make_settings(_toml("", files_root))
        return _Crm(name, settings, lambda: _local_inventory(tmp_path / "home"))
    target = TARGETS[name]
    sim = target.make()
    settings = make_settings(_toml(target.toml(sim), files_root))
    return _Crm(
        name, settings, lambda: target.inventory(sim), httpx.ASGITransport(app=sim), lambda: target.leftovers(sim)
    )


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_cancelled_upload_leaves_no_record(crm: _Crm, mode: Mode) -> None:
    payload = os.urandom(PAYLOAD_SIZE)
    async with Client(build_server(crm.settings, transport=crm.transport), mode=mode) as client:
        case_id = await find_one(client, "case", "Printer on fire")
        before, left_before = crm.inventory(), crm.leftovers()
        async with stalling_source(payload, SENT_BEFORE_STALL) as source:
            arguments = {"record_id": case_id, "file_name": "big.bin", "url": source.url}
            await cancel_mid_transfer(client, "upload_attachment", arguments)
            with anyio.fail_after(10):
                await source.closed.wait()  # the server tore the transfer down, clean-up included
        assert await settled(crm.inventory, before) == before
        # SuperOffice creates the attachment record before its bytes and has no call to delete one; it
        # stays on no message, shown nowhere (the listing below). Every other vendor: nothing at all.
        assert crm.leftovers() - left_before == (1 if crm.name == "superoffice" else 0)
        names = [file["name"] for file in (await ok(client, "list_case_files", case_id=case_id, limit=200))["files"]]
        assert "big.bin" not in names
        # The inventory does see a finished upload (so an orphan would have shown).
        await ok(client, "upload_attachment", record_id=case_id, file_name="small.txt", content_text="done")
        assert crm.inventory() != before


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_cancelled_photo_change_keeps_the_old_photo(crm: _Crm, mode: Mode) -> None:
    payload = b"\x89PNG\r\n\x1a\n" + os.urandom(PAYLOAD_SIZE)
    async with Client(build_server(crm.settings, transport=crm.transport), mode=mode) as client:
        contact_id = await find_one(client, "contact", "Alexander Wilson")
        old = (await ok(client, "get_contact_photo", contact_id=contact_id))["photo"]
        before, left_before = crm.inventory(), crm.leftovers()
        async with stalling_source(payload, SENT_BEFORE_STALL) as source:
            arguments = {"contact_id": contact_id, "url": source.url, "file_name": "new.png"}
            await cancel_mid_transfer(client, "bind_photo", arguments)
            with anyio.fail_after(10):
                await source.closed.wait()
        assert await settled(crm.inventory, before) == before
        assert crm.leftovers() == left_before
        assert (await ok(client, "get_contact_photo", contact_id=contact_id))["photo"]["photo_id"] == old["photo_id"]


# ------------------------------------------------------------------------------------------ save_file


def stall_downloads(monkeypatch: pytest.MonkeyPatch, sent: int) -> anyio.Event:
    """Make the local store deliver `sent` bytes of a file and then wait (a CRM that stalls
    mid-download); the event is set when crm-mcp closed the stalled download."""
    opener = LocalBackend.open_file
    closed = anyio.Event()

    @asynccontextmanager
    async def open_file(self: LocalBackend, file_id: str) -> AsyncIterator[Download]:
        async with opener(self, file_id) as download:
            original = download.chunks

            async def chunks() -> AsyncIterator[bytes]:
                given = 0
                try:
                    async for chunk in original:
                        yield chunk[: sent - given]
                        given += len(chunk)
                        if given >= sent:
                            await anyio.sleep_forever()
                finally:
                    closed.set()

            download.chunks = chunks()
            yield download

    monkeypatch.setattr(LocalBackend, "open_file", open_file)
    return closed


@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize("overwrite", [False, True])
async def test_cancelled_save_leaves_no_partial_or_temporary_file(
    settings: Settings, files_root: Path, monkeypatch: pytest.MonkeyPatch, mode: Mode, overwrite: bool
) -> None:
    (files_root / "big.bin").write_bytes(os.urandom(PAYLOAD_SIZE))
    if overwrite:
        (files_root / "copy.bin").write_bytes(b"the old copy")
    async with Client(build_server(settings), mode=mode) as client:
        case_id = demo.CASE_PRINTER_ON_FIRE
        entry = await ok(client, "upload_attachment", record_id=case_id, file_name="b", path="big.bin")
        closed = stall_downloads(monkeypatch, SENT_BEFORE_STALL)
        arguments = {"resource_uri": entry["resource_uri"], "path": "copy.bin", "overwrite": overwrite}
        await cancel_mid_transfer(client, "save_file", arguments)
        with anyio.fail_after(10):
            await closed.wait()
        expected = {"big.bin", "copy.bin"} if overwrite else {"big.bin"}
        assert await settled(lambda: {path.name for path in files_root.iterdir()}, expected) == expected
        if overwrite:
            assert (files_root / "copy.bin").read_bytes() == b"the old copy"
