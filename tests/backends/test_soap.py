"""The SOAP response reader on its own: a `base64Binary` payload decoded while it streams in, however
the response is cut into pieces, with the markup still checked by expat."""

from __future__ import annotations

import base64
import random
from xml.etree import ElementTree as ET

import pytest

from crm_mcp.backends import _soap

PIECES = [1, 2, 3, 5, 7, 64, 4096, 1 << 20]


def envelope(text: bytes, *, nil: bool = False) -> bytes:
    attrs = f' xmlns:i="{_soap.XSI}" i:nil="true"' if nil else ""
    return (
        (
            f'<s:Envelope xmlns:s="{_soap.SOAP11}" xmlns:t="{_soap.NS}"><s:Header><t:SoTimeZone>UTC</t:SoTimeZone>'
            f"</s:Header><s:Body><t:GetStreamResponse><t:Response{attrs}>"
        ).encode()
        + text
        + b"</t:Response><t:Extra>7</t:Extra></t:GetStreamResponse></s:Body></s:Envelope>"
    )


def read(body: bytes, piece: int) -> tuple[bytes, _soap.ResponseReader]:
    reader = _soap.ResponseReader(payload="Response")
    out: list[bytes] = []
    for start in range(0, len(body), piece):
        reader.feed(body[start : start + piece])
        out += reader.take()
    reader.finish()
    out += reader.take()
    return b"".join(out), reader


@pytest.mark.parametrize("piece", PIECES)
def test_payload_is_decoded_in_any_pieces(piece: int) -> None:
    data = random.Random(piece).randbytes(30_000)
    out, reader = read(envelope(base64.b64encode(data)), piece)
    assert out == data
    assert reader.payload_seen and not reader.payload_nil
    assert _soap.text(reader.body, "Extra") == "7"
    assert _soap.text(reader.headers["SoTimeZone"]) == "UTC"


def test_most_of_a_large_payload_never_goes_through_expat() -> None:
    """Expat costs as much CPU per byte as decoding; after the first piece it only sees the markup."""
    data = random.Random(1).randbytes(3_000_000)
    body = envelope(base64.b64encode(data))
    out, reader = read(body, 65536)
    assert out == data
    assert reader._fed < 3 * 65536


@pytest.mark.parametrize("piece", PIECES)
def test_line_breaks_and_spaces_in_the_payload_are_legal(piece: int) -> None:
    data = random.Random(piece).randbytes(5_000)
    text = b"\r\n  " + base64.encodebytes(data).replace(b"\n", b"\r\n\t") + b" "
    out, _ = read(envelope(text), piece)
    assert out == data


@pytest.mark.parametrize("piece", PIECES)
def test_references_comments_and_cdata_inside_the_payload_are_read_as_xml(piece: int) -> None:
    """Where the text is not plain, expat reads it again: `&#x51;` is a `Q`, a comment is no text."""
    data = random.Random(piece).randbytes(3_000)
    text = base64.b64encode(data)
    mixed = (
        text[:1000]
        + b"&#13;&#10;<!-- a < comment > -->"
        + text[1000:1001]
        + b"&#x"
        + format(text[1001], "X").encode()
        + b";<![CDATA["
        + text[1002:2000]
        + b"]]>"
        + text[2000:]
    )
    out, _ = read(envelope(mixed), piece)
    assert out == data


@pytest.mark.parametrize("piece", [1, 3, 64, 4096])
@pytest.mark.parametrize("bad", [b"QU$D", b"QUJD>QUJD", b"QUJD]]QUJD", b"QUJD&amp;QUJD", b"QUJDQQ==QUJD", b"QUJDQ"])
def test_text_that_is_not_base64_is_an_error(piece: int, bad: bytes) -> None:
    text = base64.b64encode(bytes(6000)) + bad
    with pytest.raises(ValueError, match="not valid base64"):
        read(envelope(text), piece)


@pytest.mark.parametrize("piece", [1, 64, 4096])
def test_non_ascii_text_in_the_payload_is_an_error(piece: int) -> None:
    text = base64.b64encode(bytes(6000)) + "é".encode()
    with pytest.raises(ValueError, match="not valid base64"):
        read(envelope(text), piece)


@pytest.mark.parametrize("piece", [1, 64, 4096])
def test_an_answer_cut_inside_the_payload_is_a_parse_error(piece: int) -> None:
    body = envelope(base64.b64encode(bytes(30_000)))
    with pytest.raises(ET.ParseError):
        read(body[: len(body) // 2], piece)


@pytest.mark.parametrize("piece", [1, 64, 4096])
def test_markup_after_the_bypassed_text_is_still_checked(piece: int) -> None:
    body = envelope(base64.b64encode(bytes(30_000))).replace(b"</t:Response>", b"</t:Respons>")
    with pytest.raises(ET.ParseError, match="mismatched tag"):
        read(body, piece)


def test_a_document_type_declaration_is_refused() -> None:
    body = b'<?xml version="1.0"?><!DOCTYPE s:Envelope [<!ENTITY a "QUJD">]>' + envelope(b"&a;")
    with pytest.raises(ET.ParseError, match="document type declaration"):
        read(body, 4096)


def test_an_empty_or_nil_payload_gives_no_bytes() -> None:
    assert read(envelope(b""), 7)[0] == b""
    out, reader = read(envelope(b"", nil=True), 7)
    assert out == b"" and reader.payload_nil


def test_a_fault_is_parsed_without_a_payload() -> None:
    body = (
        f'<s:Envelope xmlns:s="{_soap.SOAP11}"><s:Body><s:Fault><faultcode>s:Client</faultcode>'
        "<faultstring>No such file</faultstring></s:Fault></s:Body></s:Envelope>"
    ).encode()
    _, reader = read(body, 5)
    assert reader.fault is not None
    assert (reader.fault.code, reader.fault.message) == ("s:Client", "No such file")
    assert reader.envelope_ns == _soap.SOAP11
