"""Small, streaming SOAP 1.1 for SuperOffice's NetServer web services (document/literal).

Why hand-built envelopes and not zeep: the backend calls a dozen operations whose shapes are
fixed by the WSDL, and two of them carry files as `base64Binary`. zeep (and lxml under it) builds
whole trees in memory, so a 30 MiB attachment would be held several times over as text; it is also
not installed here. So envelopes are written as text (every value escaped), and
- a base64 payload going out is an async stream: envelope prefix, the base64 of the upload's
  chunks (the encoder shared with the other backends, `_streams.base64_encoded`), envelope suffix,
  with the exact Content-Length known in advance (`encode_request`);
- a response is parsed incrementally with a stdlib expat push parser (`pyexpat`, namespaces
  expanded to ElementTree's `{uri}local`): the text of the payload element is base64-decoded as it
  arrives (`_streams.Base64Decoder`) and never kept whole (`ResponseReader`); everything else
  (headers, faults, small bodies) becomes a small element tree.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree as ET
from xml.parsers import expat
from xml.sax.saxutils import escape

from crm_mcp.backends._streams import Base64Decoder, base64_encoded, base64_length

__all__ = [
    "ARRAYS",
    "NS",
    "SOAP11",
    "SOAP12",
    "XSI",
    "Body",
    "Fault",
    "Ints",
    "ResponseReader",
    "Stream",
    "Strings",
    "encode_request",
    "local",
    "parse_small",
]

NS = "http://www.superoffice.net/ws/crm/NetServer/Services88"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
ARRAYS = "http://schemas.microsoft.com/2003/10/Serialization/Arrays"
XSI = "http://www.w3.org/2001/XMLSchema-instance"


@dataclass(frozen=True)
class Stream:
    """A `base64Binary` element whose content is streamed from `chunks`, `size` bytes in all (at most
    one per request)."""

    chunks: AsyncIterator[bytes]
    size: int


@dataclass(frozen=True)
class Ints:
    """An `ArrayOfint` in the Microsoft serialization namespace (items `<int>`)."""

    values: tuple[int, ...]


@dataclass(frozen=True)
class Strings:
    """An `ArrayOfstring` in the Microsoft serialization namespace (items `<string>`)."""

    values: tuple[str, ...]


Value = Any
"""None (omitted), str, int, bool, Stream, Ints, or a list of (name, Value) pairs (a nested element)."""


def _text(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return escape(str(value))


def _write(name: str, value: Value, out: list[str], streams: list[Stream]) -> None:
    if value is None:
        return
    tag = f"tns:{name}"
    if isinstance(value, Stream):
        out.append(f"<{tag}>")
        out.append("\0")
        out.append(f"</{tag}>")
        streams.append(value)
    elif isinstance(value, Ints):
        items = "".join(f"<a:int>{int(item)}</a:int>" for item in value.values)
        out.append(f'<{tag} xmlns:a="{ARRAYS}">{items}</{tag}>')
    elif isinstance(value, Strings):
        items = "".join(f"<a:string>{_text(item)}</a:string>" for item in value.values)
        out.append(f'<{tag} xmlns:a="{ARRAYS}">{items}</{tag}>')
    elif isinstance(value, list):
        out.append(f"<{tag}>")
        for child_name, child in value:
            _write(child_name, child, out, streams)
        out.append(f"</{tag}>")
    else:
        out.append(f"<{tag}>{_text(value)}</{tag}>")


def envelope_text(
    operation: str, fields: Iterable[tuple[str, Value]], headers: Iterable[tuple[str, Value]]
) -> tuple[str, Stream | None, str]:
    """The envelope as (text before the streamed payload, the stream, text after); without a
    stream, everything is in the first part."""
    out: list[str] = [
        f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP11}" xmlns:tns="{NS}"><soap:Header>'
    ]
    streams: list[Stream] = []
    for name, value in headers:
        _write(name, value, out, streams)
    out.append(f"</soap:Header><soap:Body><tns:{operation}>")
    for name, value in fields:
        _write(name, value, out, streams)
    out.append(f"</tns:{operation}></soap:Body></soap:Envelope>")
    if len(streams) > 1:
        raise ValueError("at most one streamed payload per request")
    text = "".join(out)
    if not streams:
        return text, None, ""
    before, _, after = text.partition("\0")
    return before, streams[0], after


@dataclass(frozen=True)
class Body:
    """A request body: `length` bytes, either all in `data` or (when a field was a `Stream`) `data`
    followed by the streamed `chunks`."""

    data: bytes
    length: int
    chunks: AsyncIterator[bytes] | None = None


def encode_request(operation: str, fields: Iterable[tuple[str, Value]], headers: Iterable[tuple[str, Value]]) -> Body:
    """The request body. A streamed payload is base64-encoded as it is sent, and the exact length is
    known beforehand (the stream's size), so the request carries a Content-Length rather than being chunked."""
    before, stream, after = envelope_text(operation, fields, headers)
    if stream is None:
        data = before.encode("utf-8")
        return Body(data=data, length=len(data))
    head, tail = before.encode("utf-8"), after.encode("utf-8")

    async def rest() -> AsyncIterator[bytes]:
        async for piece in base64_encoded(stream.chunks):
            yield piece
        yield tail

    return Body(data=head, length=len(head) + base64_length(stream.size) + len(tail), chunks=rest())


# ------------------------------------------------------------------------------------- responses


def local(tag: str) -> str:
    return tag.rpartition("}")[2]


@dataclass
class Fault:
    code: str
    message: str
    detail: str | None = None
    friendly: str | None = None
    """`FriendlyText` of an exception-info element inside `<detail>`, when SuperOffice sends one."""
    kind: str | None = None
    """Its `ExceptionType`."""


_XML_SPACE = b" \t\r\n"
"""What XML Schema lets separate the characters of a base64Binary (its whiteSpace facet is collapse)."""


@dataclass
class ResponseReader:
    """Feed a SOAP 1.1 response in pieces. Headers, faults and the body become small trees; if
    `payload` names a child of the operation's response element (e.g. "Response"), its text is
    base64-decoded as it streams in and handed out through `take()`, never kept whole.

    Why most of the payload's text bypasses expat: expat reading character data costs about as much
    CPU as decoding it (both ~270 MB/s of file bytes here). So once expat has reported the payload's
    text right up to the end of what it was fed (it holds nothing half-read, see `data`), the next
    pieces are only searched for `<` and `&` (memchr speed) and the plain text before them goes
    straight to the decoder; expat is fed the rest from that byte on. It then sees the payload element
    with part of its text left out, which is still the same markup, so every tag is still checked.
    Text that expat would have accepted but is not base64 is refused by the decoder either way.
    """

    payload: str | None = None
    headers: dict[str, ET.Element] = field(default_factory=dict)
    body: ET.Element | None = None
    fault: Fault | None = None
    envelope_ns: str | None = None
    payload_seen: bool = False
    payload_nil: bool = False
    _out: list[bytes] = field(default_factory=list)
    _path: list[str] = field(default_factory=list)
    _builder: ET.TreeBuilder | None = None
    _depth_built: int = 0
    _in_payload: bool = False
    _decoder: Base64Decoder = field(default_factory=lambda: Base64Decoder(whitespace=_XML_SPACE))
    _fed: int = 0
    """Bytes given to expat so far (its byte index counts only those)."""
    _direct: bool = False
    """Whether the next piece starts inside the payload's text, with nothing pending in expat."""
    _in_cdata: bool = False
    """Inside a CDATA section the text runs to `]]>`, not to `<`: no bypass there."""
    _names: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parser = expat.ParserCreate(namespace_separator="}")
        parser.StartElementHandler = self.start
        parser.EndElementHandler = self.end
        parser.CharacterDataHandler = self.data
        parser.StartDoctypeDeclHandler = _refuse_doctype
        parser.StartCdataSectionHandler = self._cdata_starts
        parser.EndCdataSectionHandler = self._cdata_ends
        self._parser = parser

    # -- the parser's handlers ----------------------------------------------------------------

    def _name(self, raw: str) -> str:
        """expat's `uri}local` as ElementTree's `{uri}local`."""
        name = self._names.get(raw)
        if name is None:
            name = self._names[raw] = "{" + raw if "}" in raw else raw
        return name

    def start(self, raw_tag: str, raw_attrs: dict[str, str]) -> None:
        tag = self._name(raw_tag)
        attrs = {self._name(key): value for key, value in raw_attrs.items()}
        depth = len(self._path)
        self._path.append(tag)
        if depth == 0:
            self.envelope_ns = tag.partition("}")[0].lstrip("{")
            return
        section = local(self._path[1])
        if depth == 3 and section == "Body" and self.payload is not None and local(tag) == self.payload:
            self._in_payload = True
            self.payload_seen = True
            self.payload_nil = attrs.get(f"{{{XSI}}}nil") == "true"
            return
        if self._builder is not None:
            self._builder.start(tag, attrs)
            return
        if depth == 1:
            return  # Header / Body
        # depth 2: a header element, the operation's response element, or soap:Fault
        self._builder = ET.TreeBuilder()
        self._builder.start(tag, attrs)
        self._depth_built = depth

    def end(self, raw_tag: str) -> None:
        tag = self._name(raw_tag)
        depth = len(self._path) - 1
        self._path.pop()
        if self._in_payload and depth == 3:
            self._in_payload = False
            self._emit(self._decoder.finish())
            return
        if self._builder is None:
            return
        element = self._builder.end(tag)
        if depth == self._depth_built:
            self._builder = None
            section = local(self._path[1]) if len(self._path) > 1 else ""
            if section == "Header":
                self.headers[local(tag)] = element
            elif local(tag) == "Fault":
                self.fault = _fault(element)
            else:
                self.body = element

    def data(self, text: str) -> None:
        if self._in_payload:
            self._emit(self._decoder.feed(text))
            # The text was ASCII (or the decoder refused it), so it is len(text) bytes of input: when it
            # ends where the input ends, expat has nothing pending and the next piece may bypass it.
            # (A character reference is reported as one character for several bytes, so never matches.)
            if self._parser.CurrentByteIndex + len(text) == self._fed and not self._in_cdata:
                self._direct = True
        elif self._builder is not None:
            self._builder.data(text)

    def _cdata_starts(self) -> None:
        self._in_cdata = True

    def _cdata_ends(self) -> None:
        self._in_cdata = False

    # -- feeding ----------------------------------------------------------------------------

    def _emit(self, piece: bytes) -> None:
        if piece:
            self._out.append(piece)

    def _bypass(self, data: bytes) -> bytes:
        """Decode the payload text at the start of `data`; return the rest, from the first `<` or `&`."""
        stop = data.find(b"<")
        amp = data.find(b"&", 0, stop if stop >= 0 else len(data))
        if amp >= 0:
            stop = amp
        if stop < 0:
            self._emit(self._decoder.feed(data))
            return b""
        self._direct = False
        self._emit(self._decoder.feed(memoryview(data)[:stop]))
        return data[stop:]

    def feed(self, data: bytes) -> None:
        if self._direct:
            data = self._bypass(data)
            if not data:
                return
        self._fed += len(data)
        try:
            self._parser.Parse(data, False)
        except expat.ExpatError as exc:
            raise _parse_error(exc) from None

    def finish(self) -> None:
        try:
            self._parser.Parse(b"", True)
        except expat.ExpatError as exc:
            raise _parse_error(exc) from None

    def take(self) -> list[bytes]:
        out, self._out = self._out, []
        return out


def _refuse_doctype(*_: object) -> None:
    # SOAP 1.1 (section 3) forbids a DTD; refusing it also rules out entities that expand to text.
    raise ET.ParseError("a SOAP message must not contain a document type declaration")


def _parse_error(exc: expat.ExpatError) -> ET.ParseError:
    """ElementTree's error for expat's, as the callers catch `ET.ParseError`."""
    error = ET.ParseError(f"{expat.ErrorString(exc.code)}: line {exc.lineno}, column {exc.offset}")
    error.code = exc.code
    error.position = (exc.lineno, exc.offset)
    return error


def _fault(element: ET.Element) -> Fault:
    code = message = ""
    detail: str | None = None
    friendly: str | None = None
    kind: str | None = None
    for child in element:
        name = local(child.tag)
        if name == "faultcode":
            code = (child.text or "").strip()
        elif name == "faultstring":
            message = (child.text or "").strip()
        elif name == "detail":
            detail = " ".join("".join(child.itertext()).split()) or None
            for item in child.iter():
                if local(item.tag) == "FriendlyText" and (item.text or "").strip():
                    friendly = item.text.strip() if item.text else None
                elif local(item.tag) == "ExceptionType" and (item.text or "").strip():
                    kind = item.text.strip() if item.text else None
        elif name == "Code":  # SOAP 1.2 shape, in case
            code = " ".join("".join(child.itertext()).split())
        elif name == "Reason":
            message = " ".join("".join(child.itertext()).split())
    return Fault(code=code, message=message, detail=detail, friendly=friendly, kind=kind)


def parse_small(data: bytes) -> ResponseReader:
    reader = ResponseReader()
    reader.feed(data)
    reader.finish()
    return reader


# ------------------------------------------------------------------------------- element helpers


def child(element: ET.Element | None, *names: str) -> ET.Element | None:
    """The first descendant along `names` (local names), or None."""
    for name in names:
        if element is None:
            return None
        element = next((item for item in element if local(item.tag) == name), None)
    return element


def children(element: ET.Element | None, name: str) -> list[ET.Element]:
    return [] if element is None else [item for item in element if local(item.tag) == name]


def text(element: ET.Element | None, *names: str) -> str | None:
    found = child(element, *names)
    if found is None or found.get(f"{{{XSI}}}nil") == "true":
        return None
    return found.text or ""


def integer(element: ET.Element | None, *names: str) -> int | None:
    value = text(element, *names)
    try:
        return int(value.strip()) if value is not None else None
    except ValueError:
        return None
