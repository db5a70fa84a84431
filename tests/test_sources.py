"""Upload sources: exactly one, confined paths, safe URLs, exact sizes, detected MIME types."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from crm_mcp._memory import MMAP_THRESHOLD
from crm_mcp.app import CrmApp
from crm_mcp.backends.base import Upload
from crm_mcp.config import Settings
from crm_mcp.errors import AccessDeniedError, InvalidInputError, NotFoundError, TooLargeError
from crm_mcp.sources import (
    FILE_PIECE,
    SourceContext,
    StreamDigest,
    make_source,
    open_source,
    resolve_readable,
    resolve_writable,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4

pytestmark = pytest.mark.anyio


async def collect(upload: Upload) -> bytes:
    return b"".join([chunk async for chunk in upload.chunks])


async def read_source(settings: Settings, **source: str) -> tuple[Upload, bytes]:
    context = SourceContext(app=CrmApp(settings=settings, backends={}))
    file_name = source.pop("file_name", None)
    async with open_source(make_source(**source), context, file_name=file_name) as upload:
        return upload, await collect(upload)


# ------------------------------------------------------------------------------------ exactly one


def test_no_source_is_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"give exactly one source .* got none"):
        make_source()


def test_two_sources_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="got path and content_text"):
        make_source(path="a.txt", content_text="x")


def test_one_source_is_accepted() -> None:
    assert make_source(url="https://example.com/a.pdf").kind == "url"


# ------------------------------------------------------------------------------------------ paths


async def test_path_source_streams_the_file(settings: Settings, files_root: Path) -> None:
    (files_root / "p.png").write_bytes(PNG)
    upload, data = await read_source(settings, path=str(files_root / "p.png"))
    assert (upload.name, upload.mime_type, upload.size) == ("p.png", "image/png", len(PNG))
    assert data == PNG


async def test_path_source_reads_pieces_just_under_one_mib(
    make_settings: Callable[..., Settings], files_root: Path
) -> None:
    """Each read is a worker-thread round trip: at ~1 MiB a 200 MiB upload makes ~200 of them, not 800."""
    settings = make_settings("[limits]\nmax_transfer_bytes = 10000000\n")
    data = os.urandom(2 * FILE_PIECE + 5)
    (files_root / "big.bin").write_bytes(data)
    context = SourceContext(app=CrmApp(settings=settings, backends={}))
    async with open_source(make_source(path="big.bin"), context, mime_type="application/octet-stream") as upload:
        sizes = [len(chunk) async for chunk in upload.chunks]
    assert FILE_PIECE + 64 < MMAP_THRESHOLD  # 64: headers; a larger piece is mapped and unmapped per read
    assert sizes == [FILE_PIECE, FILE_PIECE, 5]


async def test_relative_path_is_inside_the_first_root(settings: Settings, files_root: Path) -> None:
    (files_root / "notes.txt").write_text("hi")
    upload, data = await read_source(settings, path="notes.txt")
    assert data == b"hi"
    assert upload.mime_type == "text/plain"


def test_dotdot_out_of_the_root_is_refused(files_root: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("s")
    with pytest.raises(AccessDeniedError, match="outside the folders this server may read"):
        resolve_readable("../secret.txt", (files_root,))


def test_symlink_out_of_the_root_is_refused(files_root: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("s")
    (files_root / "link.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(AccessDeniedError, match="outside"):
        resolve_readable(str(files_root / "link.txt"), (files_root,))


def test_absolute_path_elsewhere_is_refused(files_root: Path) -> None:
    with pytest.raises(AccessDeniedError):
        resolve_readable("/etc/hostname", (files_root,))


def test_directory_is_refused(files_root: Path) -> None:
    (files_root / "sub").mkdir()
    with pytest.raises(InvalidInputError, match="is a folder"):
        resolve_readable("sub", (files_root,))


def test_device_file_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="not a regular file"):
        resolve_readable("/dev/null", (Path("/dev"),))


def test_missing_file_is_not_found(files_root: Path) -> None:
    with pytest.raises(NotFoundError, match="no file at"):
        resolve_readable("nope.txt", (files_root,))


async def test_path_over_the_limit_is_refused(make_settings: Callable[..., Settings], files_root: Path) -> None:
    settings = make_settings("[limits]\nmax_transfer_bytes = 10\n")
    (files_root / "big.bin").write_bytes(b"x" * 11)
    with pytest.raises(TooLargeError, match="over this server's transfer limit of 10 bytes"):
        await read_source(settings, path="big.bin")


def test_writable_path_inside_root(files_root: Path) -> None:
    (files_root / "sub").mkdir()
    assert resolve_writable("sub/../x.pdf", (files_root,), "n.pdf") == files_root / "x.pdf"


def test_writable_folder_gets_the_file_name(files_root: Path) -> None:
    assert resolve_writable(str(files_root), (files_root,), "report.pdf") == files_root / "report.pdf"


def test_writable_outside_root_is_refused(files_root: Path, tmp_path: Path) -> None:
    with pytest.raises(AccessDeniedError):
        resolve_writable(str(tmp_path / "x.pdf"), (files_root,), "x.pdf")


def test_writable_through_symlink_is_refused(files_root: Path, tmp_path: Path) -> None:
    (files_root / "l.txt").symlink_to(tmp_path / "target.txt")
    with pytest.raises(AccessDeniedError, match="symbolic link"):
        resolve_writable("l.txt", (files_root,), "x")


def test_writable_into_missing_folder_is_not_found(files_root: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        resolve_writable("missing/x.pdf", (files_root,), "x.pdf")


# ----------------------------------------------------------------------------------- base64, text


async def test_base64_source(settings: Settings) -> None:
    upload, data = await read_source(settings, content_base64=base64.b64encode(PNG).decode(), file_name="a.png")
    assert data == PNG
    assert upload.mime_type == "image/png"


async def test_base64_data_url_source(settings: Settings) -> None:
    encoded = "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4 x").decode()
    upload, data = await read_source(settings, content_base64=encoded, file_name="x.pdf")
    assert data == b"%PDF-1.4 x"
    assert upload.mime_type == "application/pdf"


async def test_invalid_base64_is_refused(settings: Settings) -> None:
    with pytest.raises(InvalidInputError, match="not valid base64"):
        await read_source(settings, content_base64="not base64!!", file_name="x.bin")


async def test_text_source_is_utf8(settings: Settings) -> None:
    upload, data = await read_source(settings, content_text="héllo", file_name="n.md")
    assert data == "héllo".encode()
    assert upload.mime_type == "text/markdown"


@pytest.mark.parametrize("name", ["../x.txt", "a/b.txt", "a\\b.txt", " ", "x\x00.txt"])
async def test_bad_file_names_are_refused(settings: Settings, name: str) -> None:
    with pytest.raises(InvalidInputError, match="file_name"):
        await read_source(settings, content_text="x", file_name=name)


# --------------------------------------------------------------------------------------------- urls


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        routes = {
            "/photo.png": (200, {"Content-Length": str(len(PNG)), "Content-Type": "image/png"}, PNG),
            "/stream": (200, {"Content-Type": "text/csv"}, b"a,b\n1,2\n"),
            "/redirect": (302, {"Location": "/photo.png", "Content-Length": "0"}, b""),
            "/short": (200, {"Content-Length": "100"}, b"only ten b"),
            "/named": (200, {"Content-Length": "3", "Content-Disposition": 'attachment; filename="r.txt"'}, b"abc"),
            "/unannounced": (200, {"Content-Type": "application/octet-stream"}, b"z" * 5000),
            "/to-private": (302, {"Location": "http://127.0.0.2:9/secret", "Content-Length": "0"}, b""),
        }
        status, headers, body = routes.get(self.path, (404, {"Content-Length": "0"}, b""))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def private_ok(make_settings: Callable[..., Settings], files_root: Path) -> Settings:
    return make_settings(f'[files]\nroots = ["{files_root}"]\nallow_private_urls = true\n')


async def test_url_source_streams_the_body(private_ok: Settings, web: str) -> None:
    upload, data = await read_source(private_ok, url=f"{web}/photo.png")
    assert data == PNG
    assert (upload.name, upload.mime_type, upload.size) == ("photo.png", "image/png", len(PNG))


async def test_url_without_length_is_spooled_to_learn_its_size(private_ok: Settings, web: str) -> None:
    upload, data = await read_source(private_ok, url=f"{web}/stream")
    assert data == b"a,b\n1,2\n"
    assert upload.size == 8
    assert upload.mime_type == "text/csv"


async def test_url_redirect_is_followed(private_ok: Settings, web: str) -> None:
    _, data = await read_source(private_ok, url=f"{web}/redirect")
    assert data == PNG


async def test_url_file_name_from_content_disposition(private_ok: Settings, web: str) -> None:
    upload, _ = await read_source(private_ok, url=f"{web}/named")
    assert upload.name == "r.txt"


async def test_url_truncated_body_is_refused(private_ok: Settings, web: str) -> None:
    with pytest.raises(InvalidInputError, match=r"broke off|ended after"):
        await read_source(private_ok, url=f"{web}/short")


async def test_url_error_status_is_refused(private_ok: Settings, web: str) -> None:
    with pytest.raises(InvalidInputError, match="answered HTTP 404"):
        await read_source(private_ok, url=f"{web}/missing")


async def test_loopback_url_is_refused_by_default(settings: Settings, web: str) -> None:
    with pytest.raises(AccessDeniedError, match="private, loopback or link-local"):
        await read_source(settings, url=f"{web}/photo.png")


async def test_hostname_resolving_to_loopback_is_refused(settings: Settings, web: str) -> None:
    with pytest.raises(AccessDeniedError, match=r"127\.0\.0\.1"):
        await read_source(settings, url=web.replace("127.0.0.1", "localhost") + "/photo.png")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://x"])
async def test_non_http_schemes_are_refused(settings: Settings, url: str) -> None:
    with pytest.raises(InvalidInputError, match="only http and https"):
        await read_source(settings, url=url)


async def test_url_over_the_limit_is_refused_from_its_length(
    make_settings: Callable[..., Settings], files_root: Path, web: str
) -> None:
    settings = make_settings(
        f'[files]\nroots = ["{files_root}"]\nallow_private_urls = true\n[limits]\nmax_transfer_bytes = 100\n'
    )
    with pytest.raises(TooLargeError):
        await read_source(settings, url=f"{web}/photo.png")


async def test_url_errors_never_echo_credentials_or_query(private_ok: Settings, web: str) -> None:
    secret_url = web.replace("http://", "http://user:hunter2@") + "/missing?X-Amz-Signature=s3cr3t"
    with pytest.raises(InvalidInputError) as caught:
        await read_source(private_ok, url=secret_url)
    assert "HTTP 404" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


async def test_url_without_length_is_stopped_at_the_limit_while_streaming(
    make_settings: Callable[..., Settings], files_root: Path, web: str
) -> None:
    settings = make_settings(
        f'[files]\nroots = ["{files_root}"]\nallow_private_urls = true\n[limits]\nmax_transfer_bytes = 1000\n'
    )
    with pytest.raises(TooLargeError, match="transfer limit of 1,000 bytes"):
        await read_source(settings, url=f"{web}/unannounced")


async def test_redirect_to_a_private_address_is_refused(
    settings: Settings, web: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the first hop (this test's server on 127.0.0.1) counts as public here; the redirect's
    target is checked again before anything is sent to it."""
    monkeypatch.setattr("crm_mcp.sources._is_public", lambda address: address == "127.0.0.1")
    with pytest.raises(AccessDeniedError, match=r"127\.0\.0\.2"):
        await read_source(settings, url=f"{web}/to-private")


# ------------------------------------------------------------------------------------ digest, pairs


async def _pieces(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def test_digest_hashes_and_counts_what_the_consumer_pulls() -> None:
    digest = StreamDigest()
    pulled = [chunk async for chunk in digest.wrap(_pieces(b"ab", b"cde"))]
    assert pulled == [b"ab", b"cde"]
    assert (digest.size, digest.hexdigest()) == (5, hashlib.sha256(b"abcde").hexdigest())


async def test_a_consumer_that_takes_the_hash_over_feeds_the_same_digest() -> None:
    """The local store hashes what it writes anyway; taking the hash over makes that the only hash."""
    digest = StreamDigest()
    chunks = digest.wrap(_pieces(b"ab", b"cde"))
    assert [await chunks.__anext__()] == [b"ab"]  # hashed by the digest
    hasher = chunks.take_hashing()
    rest = [chunk async for chunk in chunks]  # from now on, hashed only by the consumer...
    assert digest.hexdigest() == hashlib.sha256(b"ab").hexdigest() and digest.size == 5
    for chunk in rest:
        hasher.update(chunk)  # ...which feeds the digest's own hash
    assert digest.hexdigest() == hashlib.sha256(b"abcde").hexdigest()
