"""The shared stream helpers: the streaming base64 encoder and decoder, the checked upload body and
the checked download."""

from __future__ import annotations

import base64
import random
from collections.abc import AsyncIterator

import pytest

from crm_mcp.backends import _streams
from crm_mcp.backends._streams import (
    Base64Decoder,
    Base64Error,
    base64_encoded,
    base64_length,
    checked_download,
    checked_upload,
)
from crm_mcp.backends.base import Upload
from crm_mcp.errors import BackendError, TooLargeError

pytestmark = pytest.mark.anyio

SOAP_SPACE = b" \t\r\n"


@pytest.fixture(autouse=True, params=["binascii", "pybase64"])
def base64_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on the standard library's base64 and on pybase64 (the SIMD dependency), so an
    install without pybase64 behaves exactly like one with it."""
    if request.param == "binascii":
        monkeypatch.setattr(_streams, "_simd_b64decode", None)
        monkeypatch.setattr(_streams, "_b2a", base64.b64encode)
    else:
        pybase64 = pytest.importorskip("pybase64")
        monkeypatch.setattr(_streams, "_simd_b64decode", pybase64.b64decode)
        monkeypatch.setattr(_streams, "_b2a", pybase64.b64encode)
    return request.param


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


async def _pieces(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_checked_upload_passes_a_source_that_keeps_its_word() -> None:
    upload = Upload("a.bin", "application/octet-stream", 6, _pieces(b"abc", b"def"))
    assert [chunk async for chunk in checked_upload(upload, limit=100)] == [b"abc", b"def"]


@pytest.mark.parametrize(
    ("size", "limit", "error", "words"),
    [
        (4, 100, BackendError, "more than the 4 bytes it announced"),
        (9, 100, BackendError, "ended after 6 of 9 bytes"),
        (6, 5, TooLargeError, "transfer limit of 5 bytes"),
    ],
)
async def test_checked_upload_stops_a_source_that_does_not(
    size: int, limit: int, error: type[Exception], words: str
) -> None:
    upload = Upload("a.bin", "application/octet-stream", size, _pieces(b"abc", b"def"))
    with pytest.raises(error, match=words):
        async for _ in checked_upload(upload, limit=limit):
            pass


async def test_checked_upload_prefers_the_lie_to_the_limit_when_one_chunk_passes_both() -> None:
    upload = Upload("a.bin", "application/octet-stream", 4, _pieces(b"abc", b"def"))
    with pytest.raises(BackendError, match=r"more than the 4 bytes it announced; nothing was stored$"):
        async for _ in checked_upload(upload, limit=5, outcome="; nothing was stored"):
            pass


@pytest.mark.parametrize(
    ("size", "words"),
    [(4, r"more than the 4 bytes it announced; x$"), (9, r"ended after 6 of 9 bytes \(truncated\); x$")],
)
async def test_checked_upload_appends_the_callers_outcome(size: int, words: str) -> None:
    upload = Upload("a.bin", "application/octet-stream", size, _pieces(b"abc", b"def"))
    with pytest.raises(BackendError, match=words):
        async for _ in checked_upload(upload, limit=100, outcome="; x"):
            pass


# ---------------------------------------------------------------------------- checked download


class _Source:
    """Chunks that record how many were read, so a test can tell the rest was never asked for."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.read = 0
        self.closed = False

    def __aiter__(self) -> _Source:
        return self

    async def __anext__(self) -> bytes:
        if self.read == len(self.chunks):
            raise StopAsyncIteration
        self.read += 1
        return self.chunks[self.read - 1]

    async def aclose(self) -> None:
        self.closed = True


async def _drain(chunks: AsyncIterator[bytes], into: list[bytes]) -> None:
    async for chunk in chunks:
        into.append(chunk)


@pytest.mark.parametrize("size", [6, None])
async def test_checked_download_passes_a_body_of_the_announced_or_an_unknown_size(size: int | None) -> None:
    body = checked_download(_Source(b"abc", b"def"), name="a.bin", size=size, limit=6)
    assert [chunk async for chunk in body] == [b"abc", b"def"]


@pytest.mark.parametrize("size", [100, None])
async def test_checked_download_refuses_the_chunk_that_passes_the_limit_and_reads_no_further(
    size: int | None,
) -> None:
    source = _Source(b"abc", b"def", b"ghi", b"jkl")
    handed_out: list[bytes] = []
    with pytest.raises(TooLargeError, match=r"'a\.bin' grew past this server's transfer limit of 5 bytes"):
        await _drain(checked_download(source, name="a.bin", size=size, limit=5), handed_out)
    assert handed_out == [b"abc"]
    assert source.read == 2
    assert source.closed


async def test_checked_download_refuses_a_short_body_at_its_end() -> None:
    handed_out: list[bytes] = []
    body = checked_download(_Source(b"abc", b"def"), name="a.bin", size=9, limit=100, source="Acme")
    with pytest.raises(
        BackendError, match=r"^Acme sent only 6 of the 9 bytes of 'a\.bin' it announced: .*; try again$"
    ):
        await _drain(body, handed_out)
    assert handed_out == [b"abc", b"def"]


async def test_checked_download_refuses_a_long_body_at_the_chunk_that_passes_the_size() -> None:
    source = _Source(b"abc", b"def", b"ghi")
    handed_out: list[bytes] = []
    body = checked_download(source, name="a.bin", size=4, limit=100, size_from="its Content-Length announced")
    with pytest.raises(BackendError, match=r"sent more than the 4 bytes of 'a\.bin' its Content-Length announced"):
        await _drain(body, handed_out)
    assert handed_out == [b"abc"]
    assert source.read == 2


async def test_checked_download_reports_a_long_body_before_the_limit_when_one_chunk_passes_both() -> None:
    with pytest.raises(BackendError, match="more than the 4 bytes"):
        await _drain(checked_download(_Source(b"abc", b"def"), name="a.bin", size=4, limit=5), [])


async def test_checked_download_puts_the_callers_hint_in_a_wrong_length_error() -> None:
    body = checked_download(_Source(b"abc"), name="a.bin", size=4, limit=100, hint="check the record")
    with pytest.raises(BackendError, match=r"; check the record$"):
        await _drain(body, [])


class _Cut(Exception):
    """Stands for the HTTP library's error when a connection breaks."""


async def _cut_after(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    raise _Cut("reset")


async def test_checked_download_words_a_broken_source_with_how_far_it_got() -> None:
    def broken(exc: BaseException, received: int) -> BackendError:
        return BackendError(f"broke after {received} bytes ({type(exc).__name__})")

    body = checked_download(
        _cut_after(b"abc", b"de"), name="a.bin", size=9, limit=100, broken_on=(_Cut,), broken=broken
    )
    with pytest.raises(BackendError, match=r"^broke after 5 bytes \(_Cut\)$"):
        await _drain(body, [])


async def test_checked_download_leaves_errors_it_was_not_told_about_alone() -> None:
    with pytest.raises(_Cut):
        await _drain(checked_download(_cut_after(b"abc"), name="a.bin", size=None, limit=100), [])


async def test_checked_download_closes_its_source_when_closed() -> None:
    source = _Source(b"abc", b"def")
    body = checked_download(source, name="a.bin", size=None, limit=100)
    assert await body.__anext__() == b"abc"
    await body.aclose()
    assert source.closed


# ------------------------------------------------------------------------------------- decoder


def decode_pieces(pieces: list[bytes | str], *, whitespace: bytes = b"", pad: bool = False) -> bytes:
    decoder = Base64Decoder(whitespace=whitespace)
    out = b"".join(decoder.feed(piece) for piece in pieces)
    return out + decoder.finish(pad=pad)


def splits(text: bytes) -> list[list[bytes]]:
    """`text` cut in two at every offset, and in three around every offset (so each boundary falls
    0..3 characters into a 4-character group, with the carry both empty and not)."""
    out = [[text[:cut], text[cut:]] for cut in range(len(text) + 1)]
    out += [[text[:cut], text[cut : cut + 5], text[cut + 5 :]] for cut in range(len(text) + 1)]
    return out


@pytest.mark.parametrize("size", range(10))
def test_decoder_gives_the_whole_file_however_the_text_is_cut(size: int) -> None:
    data = random.Random(size).randbytes(size)
    text = base64.b64encode(data)
    for pieces in splits(text):
        assert decode_pieces(pieces) == data, pieces


@pytest.mark.parametrize("step", [1, 2, 3, 4, 5, 7, 4096])
def test_decoder_accepts_pieces_of_any_size_and_type(step: int) -> None:
    data = random.Random(step).randbytes(3001)
    text = base64.b64encode(data)
    pieces: list[bytes | str] = []
    for index, start in enumerate(range(0, len(text), step)):
        piece = text[start : start + step]
        pieces.append([piece, piece.decode(), bytearray(piece), memoryview(piece)][index % 4])  # type: ignore[arg-type]
    assert decode_pieces(pieces) == data


def test_decoder_counts_the_bytes_it_produced() -> None:
    decoder = Base64Decoder()
    decoder.feed(b"QUJDRE")
    assert decoder.decoded == 3
    decoder.feed(b"VG")
    assert decoder.decoded == 6


@pytest.mark.parametrize("size", [1, 2, 5, 57, 300])
def test_decoder_skips_the_whitespace_it_is_told_about(size: int) -> None:
    """MIME-style line breaks (CRLF every 76), spaces and tabs, anywhere, even after the padding."""
    data = random.Random(size).randbytes(size)
    text = base64.encodebytes(data).replace(b"\n", b"\r\n")
    text = b"\t " + text[:3] + b" " + text[3:] + b"  \n"
    for pieces in splits(text):
        assert decode_pieces(pieces, whitespace=SOAP_SPACE) == data, pieces


def test_decoder_refuses_whitespace_it_was_not_told_about() -> None:
    with pytest.raises(Base64Error, match="Only base64 data"):
        decode_pieces([b"QUJD\nQUJD"])


@pytest.mark.parametrize(("text", "data"), [(b"QQ==", b"A"), (b"QUI=", b"AB"), (b"QUJD", b"ABC")])
def test_decoder_takes_padding_at_the_end(text: bytes, data: bytes) -> None:
    for pieces in splits(text):
        assert decode_pieces(pieces) == data


@pytest.mark.parametrize("text", [b"QQ==QUJD", b"QUJDQQ==QQ==", b"QUI=QUJD", b"QUJD====QUJD", b"QQ==\nQUJD", b"QQ==Q"])
def test_decoder_refuses_data_after_the_padding_wherever_the_pieces_are_cut(text: bytes) -> None:
    """Decoding each piece on its own would accept `QQ==` then `QUJD`, giving wrong bytes."""
    for pieces in splits(text):
        with pytest.raises(Base64Error, match=r"padding|incomplete"):
            decode_pieces(pieces, whitespace=SOAP_SPACE)


@pytest.mark.parametrize(
    "text", [b"QU$D", b"QUJD-_==", b"QUJD\x00AAA", b"=QUJ", b"QQ=A", b"QUJD QUJD", b"QUJD\xc3\xa9", b"Q$"]
)
def test_decoder_refuses_characters_outside_the_alphabet(text: bytes) -> None:
    for pieces in splits(text):
        with pytest.raises(Base64Error, match="not valid base64"):
            decode_pieces(pieces)


def test_decoder_refuses_non_ascii_text() -> None:
    with pytest.raises(Base64Error, match="non-ASCII character 'é'"):
        Base64Decoder().feed("QUJé")


@pytest.mark.parametrize("text", [b"Q", b"QU", b"QUJ", b"QUJDR", b"QUJDRE", b"QUJDREV", b"QUJ\n"])
def test_decoder_refuses_truncated_text(text: bytes) -> None:
    for pieces in splits(text):
        with pytest.raises(Base64Error, match=r"ends with [1-3] character\(s\) of an incomplete"):
            decode_pieces(pieces, whitespace=SOAP_SPACE)


@pytest.mark.parametrize(("text", "data"), [(b"QQ", b"A"), (b"QUI", b"AB"), (b"QUJDQQ", b"ABCA"), (b"QQ=", b"A")])
def test_decoder_pads_the_last_group_when_asked(text: bytes, data: bytes) -> None:
    for pieces in splits(text):
        assert decode_pieces(pieces, pad=True) == data


def test_decoder_refuses_a_single_character_group_even_when_padding() -> None:
    with pytest.raises(Base64Error, match="ends with 1 character"):
        decode_pieces([b"QUJDQ"], pad=True)


def test_decoder_error_says_how_far_it_got() -> None:
    decoder = Base64Decoder()
    decoder.feed(b"QUJDQUJD")
    with pytest.raises(Base64Error, match="after 6 decoded bytes: Only base64 data is allowed"):
        decoder.feed(b"QU*D")
