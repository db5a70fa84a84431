"""MIME detection: bytes first, names to refine containers and text."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from crm_mcp.content import _suffix, detect_mime, extension_for, from_name, is_text, normalize_mime, sniff
from crm_mcp.errors import InvalidInputError

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (PNG, "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"PK\x03\x04\x14\x00", "application/zip"),
        (b"\x00\x00\x00\x18ftypheic", "image/heic"),
        (b'{"a": 1}', "application/json"),
        (b"hello, world\n", "text/plain"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
        (b"\x00\x01\x02\xff\xfe", None),
    ],
)
def test_sniff(head: bytes, expected: str | None) -> None:
    assert sniff(head) == expected


def test_bytes_beat_a_misleading_name() -> None:
    assert detect_mime(PNG, "photo.jpg") == "image/png"


def test_name_refines_a_zip_container() -> None:
    expected = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    assert detect_mime(b"PK\x03\x04rest", "report.docx") == expected


def test_name_refines_text() -> None:
    assert detect_mime(b"a,b\n1,2\n", "data.csv") == "text/csv"


def test_name_is_used_when_bytes_prove_nothing() -> None:
    assert detect_mime(b"\x00\x01\x02", "archive.tar") == "application/x-tar"


def test_unknown_binary_is_octet_stream() -> None:
    assert detect_mime(b"\x00\x01\x02", None) == "application/octet-stream"


def test_utf8_cut_mid_character_is_still_text() -> None:
    assert sniff("ééé".encode()[:5]) == "text/plain"


def test_normalize_mime_strips_parameters_and_case() -> None:
    assert normalize_mime("Text/Plain; charset=UTF-8") == "text/plain"


def test_normalize_mime_refuses_garbage() -> None:
    with pytest.raises(InvalidInputError, match="is not a MIME type"):
        normalize_mime("pdf")


@pytest.mark.parametrize(("mime", "textual"), [("text/csv", True), ("application/json", True), ("image/png", False)])
def test_is_text(mime: str, textual: bool) -> None:
    assert is_text(mime) is textual


def test_extension_for() -> None:
    assert extension_for("image/png") == ".png"
    assert extension_for("text/markdown") == ".md"


@pytest.mark.parametrize(
    "name",
    [
        "report.PDF",
        "archive.tar.gz",
        ".bashrc",
        "trailing.",
        "..",
        "dir.d/plain",
        "dir\\sub\\photo.JPG",
        "photo.png/",
        "photo.png/.",
        "a/./b.txt//",
        "//",
        ".",
        "no-extension",
        "x.y/..",
    ],
)
def test_the_name_suffix_follows_pathlib(name: str) -> None:
    expected = PurePosixPath(name.replace("\\", "/")).suffix
    assert _suffix(name) == expected


def test_from_name_uses_the_last_extension_case_insensitively() -> None:
    assert from_name("Scan 2024.final.PDF") == "application/pdf"
    assert from_name("C:\\docs\\notes.md") == "text/markdown"
    assert from_name(".hidden") is None
    assert from_name("") is None
