"""The demo data set the local store is seeded with on first start.

It exists so that a fresh install can be tried with no CRM account: every tool has something to
work on. The ids are deterministic (uuid5 of a fixed namespace and a label) so the README and the
tests can name them, and the pictures and documents are generated, not shipped, so the package
carries no binary blobs. The whole set is built in well under half a second.

What it contains, and why:
- case CS-1001 "Printer on fire" with five files of five MIME types (PNG, PDF, CSV, JSON, text):
  listing, paging and reading every kind of file;
- "Alexander Wilson" with a small photo (returned inline) and a file of his own;
- "John Best" without a photo (the "no photo" path);
- "Maria Garcia" with a noisy 600x600 photo over 256 KiB (the "too big to inline" path);
- accounts, one with a file, and cases with one, two or no files.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from crm_mcp.backends._png import Canvas

__all__ = [
    "ACCOUNT_CONTOSO",
    "ACCOUNT_FABRIKAM",
    "ACCOUNT_NORTHWIND",
    "CASE_INVOICE_VAT",
    "CASE_PORTAL_LOGIN",
    "CASE_PRINTER_ON_FIRE",
    "CASE_TONER_REORDER",
    "CONTACT_ALEXANDER_WILSON",
    "CONTACT_JOHN_BEST",
    "CONTACT_MARIA_GARCIA",
    "CONTACT_WEI_CHEN",
    "NAMESPACE",
    "DemoAccount",
    "DemoCase",
    "DemoContact",
    "DemoFile",
    "DemoPhoto",
    "DemoSet",
    "build_demo",
    "demo_id",
    "simple_pdf",
]

NAMESPACE = uuid.UUID("5d0f3c59-8a8e-4f57-9b3e-2f0a6c1e7d42")
"""Fixed namespace of the demo ids: changing it would change every id the README names."""


def demo_id(label: str) -> str:
    """The deterministic GUID of a demo object, e.g. `demo_id("case:CS-1001")`."""
    return str(uuid.uuid5(NAMESPACE, label))


ACCOUNT_NORTHWIND = demo_id("account:northwind")
ACCOUNT_CONTOSO = demo_id("account:contoso")
ACCOUNT_FABRIKAM = demo_id("account:fabrikam")
CONTACT_ALEXANDER_WILSON = demo_id("contact:alexander-wilson")
CONTACT_JOHN_BEST = demo_id("contact:john-best")
CONTACT_MARIA_GARCIA = demo_id("contact:maria-garcia")
CONTACT_WEI_CHEN = demo_id("contact:wei-chen")
CASE_PRINTER_ON_FIRE = demo_id("case:CS-1001")
CASE_INVOICE_VAT = demo_id("case:CS-1002")
CASE_PORTAL_LOGIN = demo_id("case:CS-1003")
CASE_TONER_REORDER = demo_id("case:CS-1004")

_EPOCH = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)
"""Demo timestamps are fixed, so listings are in the same order in every store."""


def _at(minutes: int) -> datetime:
    return _EPOCH + timedelta(minutes=minutes)


@dataclass(frozen=True)
class DemoAccount:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class DemoContact:
    id: str
    first_name: str
    last_name: str
    email: str
    account_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class DemoCase:
    id: str
    number: str
    subject: str
    account_id: str | None
    contact_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class DemoFile:
    file_id: str
    record_type: str
    record_id: str
    name: str
    mime_type: str
    created_at: datetime
    data: bytes


@dataclass(frozen=True)
class DemoPhoto:
    photo_id: str
    contact_id: str
    name: str
    mime_type: str
    created_at: datetime
    data: bytes


@dataclass(frozen=True)
class DemoSet:
    accounts: list[DemoAccount]
    contacts: list[DemoContact]
    cases: list[DemoCase]
    files: list[DemoFile]
    photos: list[DemoPhoto]


# ------------------------------------------------------------------------------------- documents


def _pdf_string(text: str) -> str:
    """A PDF literal string: backslash and parentheses escaped (the text itself is ASCII)."""
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def simple_pdf(title: str, lines: list[str]) -> bytes:
    """A one-page PDF with a title and lines of Helvetica text, xref offsets computed exactly.

    Hand-written because a valid PDF is only five objects, and a dependency for that is not worth it.
    """
    text = [f"BT /F1 18 Tf 72 740 Td {_pdf_string(title)} Tj ET"]
    text += [f"BT /F1 11 Tf 72 {710 - 16 * i} Td {_pdf_string(line)} Tj ET" for i, line in enumerate(lines)]
    content = "\n".join(text).encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n" % (len(objects) + 1)
    out += b"0000000000 65535 f \n" + b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def _text(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode("utf-8")


def _json(value: object) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode("utf-8")


# -------------------------------------------------------------------------------------- pictures


def printer_png() -> bytes:
    """320x240: an office printer with flames and smoke above it (the star of case CS-1001)."""
    canvas = Canvas(320, 240)
    canvas.vertical_gradient((40, 44, 70), (120, 110, 120))
    canvas.rect(0, 200, 320, 240, (90, 80, 70))  # desk
    canvas.ellipse(120, 40, 50, 22, (95, 95, 100))  # smoke
    canvas.ellipse(190, 28, 60, 20, (110, 110, 115))
    canvas.rect(70, 120, 250, 200, (200, 200, 205))  # printer body
    canvas.rect(70, 120, 250, 130, (160, 160, 168))
    canvas.rect(95, 150, 225, 160, (30, 30, 35))  # paper slot
    canvas.rect(105, 160, 215, 185, (250, 250, 250))  # paper
    canvas.rect(225, 135, 240, 142, (60, 200, 80))  # status light
    for cx, half, height, colour in [
        (110, 28, 70, (200, 40, 20)),
        (160, 40, 95, (230, 90, 20)),
        (210, 28, 65, (200, 40, 20)),
        (160, 22, 60, (250, 200, 40)),
        (125, 12, 35, (250, 220, 90)),
        (195, 12, 32, (250, 220, 90)),
    ]:
        canvas.triangle_up(cx, 120, half, height, colour)
    return canvas.png()


def _portrait(
    canvas: Canvas, skin: tuple[int, int, int], hair: tuple[int, int, int], shirt: tuple[int, int, int]
) -> None:
    """Head and shoulders, scaled to the canvas."""
    w, h = canvas.width, canvas.height
    canvas.ellipse(w / 2, h * 1.02, w * 0.42, h * 0.36, shirt)
    canvas.ellipse(w / 2, h * 0.40, w * 0.24, h * 0.28, hair)
    canvas.ellipse(w / 2, h * 0.45, w * 0.20, h * 0.24, skin)
    canvas.ellipse(w * 0.42, h * 0.42, w * 0.025, h * 0.025, (40, 40, 50))
    canvas.ellipse(w * 0.58, h * 0.42, w * 0.025, h * 0.025, (40, 40, 50))
    canvas.rect(round(w * 0.44), round(h * 0.56), round(w * 0.56), round(h * 0.575), (170, 70, 70))


def avatar_png() -> bytes:
    """128x128 avatar for Alexander Wilson: small enough to be returned inline."""
    canvas = Canvas(128, 128)
    canvas.vertical_gradient((70, 160, 170), (30, 90, 130))
    _portrait(canvas, skin=(240, 200, 170), hair=(90, 60, 35), shirt=(40, 60, 140))
    return canvas.png()


def noisy_portrait_png() -> bytes:
    """600x600 portrait on a grainy background that does not compress below 256 KiB, so this photo
    takes the "too large to inline, read it through the resource link" path. Seeded, not random."""
    size = 600
    canvas = Canvas(size, size)
    grain = random.Random(20240506).randbytes(size * size * 3)
    canvas.pixels[:] = grain.translate(bytes(96 + (value >> 1) for value in range(256)))
    _portrait(canvas, skin=(200, 150, 120), hair=(30, 25, 25), shirt=(150, 40, 90))
    return canvas.png(level=1)


# ----------------------------------------------------------------------------------------- files


def _printer_case_files() -> list[DemoFile]:
    case = CASE_PRINTER_ON_FIRE
    log = [
        "timestamp,level,code,message",
        "2024-05-06T08:41:12Z,INFO,0,Print job 4411 started (48 pages)",
        "2024-05-06T08:42:30Z,WARN,E-201,Fuser temperature high (231 C)",
        "2024-05-06T08:43:02Z,WARN,E-201,Fuser temperature high (262 C)",
        "2024-05-06T08:43:40Z,ERROR,E-914,Thermal cut-off did not trip",
        "2024-05-06T08:44:05Z,ERROR,E-999,Smoke detected; job aborted",
    ]
    diagnostics = {
        "device": {"model": "LaserWriter 9000", "serial": "LW9-22871", "firmware": "4.2.1"},
        "fuser": {"temperature_c": 262, "limit_c": 210, "thermal_cutoff": "failed"},
        "counters": {"pages_total": 184_223, "jams_last_30_days": 3},
        "last_service": "2023-11-14",
    }
    notes = [
        "Technician notes - CS-1001",
        "",
        "Customer reports flames from the top of the printer during a long print job.",
        "Power was cut at the wall; the office fire extinguisher was used.",
        "Fuser unit is scorched. Thermal cut-off failed (see diagnostics.json).",
        "Action: replace fuser and cut-off, check the firmware temperature limit.",
    ]
    pdf = simple_pdf(
        "Incident report CS-1001",
        [
            "Printer on fire - Northwind Traders, 3rd floor",
            "Reported by Alexander Wilson on 6 May 2024 at 08:45.",
            "The fuser overheated during job 4411; the thermal cut-off did not trip.",
            "No injuries. The printer is out of service until the fuser is replaced.",
        ],
    )
    items = [
        ("printer.png", "image/png", printer_png()),
        ("incident-report.pdf", "application/pdf", pdf),
        ("event-log.csv", "text/csv", _text(log)),
        ("diagnostics.json", "application/json", _json(diagnostics)),
        ("technician-notes.txt", "text/plain", _text(notes)),
    ]
    return [
        DemoFile(demo_id(f"file:CS-1001/{name}"), "case", case, name, mime, _at(60 + i), data)
        for i, (name, mime, data) in enumerate(items)
    ]


def _other_files() -> list[DemoFile]:
    invoice = simple_pdf(
        "Invoice 2024-0117",
        ["Contoso Print Services", "Toner, 4 cartridges    EUR 320.00", "VAT 7%                 EUR  22.40"],
    )
    vat = _text(["item,net,rate_charged,rate_expected", "toner,320.00,0.07,0.19"])
    order = {"order": "PO-5521", "items": [{"sku": "TN-900", "quantity": 6}], "deliver_to": "3rd floor"}
    notes = ["# Alexander Wilson", "", "- Prefers e-mail over phone.", "- Office manager at Northwind, 3rd floor."]
    agreement = simple_pdf("Service agreement", ["Northwind Traders", "Printer maintenance, next-business-day"])
    return [
        DemoFile(
            demo_id("file:CS-1002/invoice-2024-0117.pdf"),
            "case",
            CASE_INVOICE_VAT,
            "invoice-2024-0117.pdf",
            "application/pdf",
            _at(130),
            invoice,
        ),
        DemoFile(
            demo_id("file:CS-1002/vat-calculation.csv"),
            "case",
            CASE_INVOICE_VAT,
            "vat-calculation.csv",
            "text/csv",
            _at(131),
            vat,
        ),
        DemoFile(
            demo_id("file:CS-1004/toner-order.json"),
            "case",
            CASE_TONER_REORDER,
            "toner-order.json",
            "application/json",
            _at(250),
            _json(order),
        ),
        DemoFile(
            demo_id("file:contact/alexander-wilson/notes.md"),
            "contact",
            CONTACT_ALEXANDER_WILSON,
            "notes.md",
            "text/markdown",
            _at(20),
            _text(notes),
        ),
        DemoFile(
            demo_id("file:account/northwind/service-agreement.pdf"),
            "account",
            ACCOUNT_NORTHWIND,
            "service-agreement.pdf",
            "application/pdf",
            _at(5),
            agreement,
        ),
    ]


def build_demo() -> DemoSet:
    """Build the whole demo set, bytes included (called only when a store is seeded)."""
    accounts = [
        DemoAccount(ACCOUNT_NORTHWIND, "Northwind Traders", _at(0)),
        DemoAccount(ACCOUNT_CONTOSO, "Contoso Print Services", _at(1)),
        DemoAccount(ACCOUNT_FABRIKAM, "Fabrikam Ltd", _at(2)),
    ]
    contacts = [
        DemoContact(
            CONTACT_ALEXANDER_WILSON,
            "Alexander",
            "Wilson",
            "alexander.wilson@northwind.example",
            ACCOUNT_NORTHWIND,
            _at(10),
        ),
        DemoContact(CONTACT_JOHN_BEST, "John", "Best", "john.best@contoso.example", ACCOUNT_CONTOSO, _at(11)),
        DemoContact(
            CONTACT_MARIA_GARCIA, "Maria", "Garcia", "maria.garcia@fabrikam.example", ACCOUNT_FABRIKAM, _at(12)
        ),
        DemoContact(CONTACT_WEI_CHEN, "Wei", "Chen", "wei.chen@northwind.example", ACCOUNT_NORTHWIND, _at(13)),
    ]
    cases = [
        DemoCase(
            CASE_PRINTER_ON_FIRE, "CS-1001", "Printer on fire", ACCOUNT_NORTHWIND, CONTACT_ALEXANDER_WILSON, _at(45)
        ),
        DemoCase(
            CASE_INVOICE_VAT,
            "CS-1002",
            "Invoice shows the wrong VAT rate",
            ACCOUNT_CONTOSO,
            CONTACT_JOHN_BEST,
            _at(120),
        ),
        DemoCase(
            CASE_PORTAL_LOGIN,
            "CS-1003",
            "Cannot log in to the customer portal",
            ACCOUNT_FABRIKAM,
            CONTACT_MARIA_GARCIA,
            _at(180),
        ),
        DemoCase(
            CASE_TONER_REORDER,
            "CS-1004",
            "Toner reorder for the 3rd floor printer",
            ACCOUNT_NORTHWIND,
            CONTACT_WEI_CHEN,
            _at(240),
        ),
    ]
    photos = [
        DemoPhoto(
            demo_id("photo:alexander-wilson"),
            CONTACT_ALEXANDER_WILSON,
            "alexander-wilson.png",
            "image/png",
            _at(10),
            avatar_png(),
        ),
        DemoPhoto(
            demo_id("photo:maria-garcia"),
            CONTACT_MARIA_GARCIA,
            "maria-garcia.png",
            "image/png",
            _at(12),
            noisy_portrait_png(),
        ),
    ]
    return DemoSet(accounts, contacts, cases, _printer_case_files() + _other_files(), photos)
