"""URL sources through upload_attachment, against a raw loopback server that lies about sizes: a
body longer than its Content-Length, or endless, is refused or cut at what was announced, the
transfer stops (an endless body would otherwise hang the test), and nothing extra is stored.
Scheme, private-address, resolving-host and redirect refusals are in tests/test_sources.py."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from crm_mcp.backends import _demo as demo
from crm_mcp.config import Settings
from crm_mcp.server import build_server
from tests.helpers import all_files, error, ok, read_bytes

pytestmark = pytest.mark.anyio

CASE = demo.CASE_PRINTER_ON_FIRE
LIMIT = 50_000


class LyingServer:
    """Answers `/chunked-over` (Content-Length 10 plus a chunked body that never ends), `/raw-over`
    (Content-Length 10, then endless bytes on the same connection) and `/endless` (no length, endless
    body). Counts what it managed to send."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.sent: dict[str, int] = {}
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            path = conn.recv(65536).split(b" ", 2)[1].decode()
            head = {
                "/chunked-over": b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n",
                "/raw-over": b"Content-Length: 10\r\n",
                "/endless": b"Connection: close\r\n",
            }[path]
            chunk = b"%x\r\n%s\r\n" % (4096, b"B" * 4096) if path == "/chunked-over" else b"B" * 4096
            sent = 0
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + head + b"\r\n")
                if path == "/raw-over":
                    conn.sendall(b"A" * 10)
                while sent < 200 * 1024 * 1024:  # far over any limit: only the client can stop it
                    conn.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass
            self.sent[path] = sent

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def liar() -> Iterator[LyingServer]:
    server = LyingServer()
    yield server
    server.close()


@pytest.fixture
def url_settings(make_settings: Callable[..., Settings], files_root: Path) -> Settings:
    return make_settings(
        f'[files]\nroots = ["{files_root}"]\nallow_private_urls = true\n[limits]\nmax_transfer_bytes = {LIMIT}\n'
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/chunked-over", "sent more than the 10 bytes it announced; not stored"),
        ("/endless", "over this server's transfer limit"),
    ],
)
async def test_a_body_longer_than_announced_or_allowed_is_refused_and_nothing_stored(
    liar: LyingServer, url_settings: Settings, path: str, expected: str
) -> None:
    async with Client(build_server(url_settings)) as client:
        before = await all_files(client, CASE)
        with anyio.fail_after(20):
            message = await error(client, "upload_attachment", record_id=CASE, file_name="lie.txt", url=liar.url + path)
        assert expected in message
        assert await all_files(client, CASE) == before


async def test_bytes_after_the_content_length_are_never_stored(liar: LyingServer, url_settings: Settings) -> None:
    """HTTP/1.1 frames the body by Content-Length: what follows is not part of the response. The
    client stops at the announced 10 bytes (the endless rest would hang the test) and stores just those."""
    async with Client(build_server(url_settings)) as client:
        with anyio.fail_after(20):
            stored = await ok(
                client, "upload_attachment", record_id=CASE, file_name="framed.txt", url=liar.url + "/raw-over"
            )
        data, _ = await read_bytes(client, stored["resource_uri"])
    assert data == b"A" * 10
    assert stored["size"] == 10
