"""Every vendor, every fault, every request of every tool operation.

For each (vendor, operation, fault kind) the operation is first run cleanly to learn its requests
and how much the CRM grows; then once per request, with that request faulted. Each faulted run must
end in the right result or a clear tool error, and leave the CRM with no orphan and no duplicate
(the simulator's inventory grew by exactly the clean run's growth, or not at all), no half-bound
photo, and no partial file at a save_file destination. The outcomes feed the summary table printed
at the end of the run (see conftest.py).
"""

from __future__ import annotations

import base64
import hashlib
import random
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from crm_mcp.config import load_settings
from crm_mcp.server import build_server
from tests.faults.injector import KINDS, FaultTransport, Kind
from tests.faults.summary import Outcome, record
from tests.faults.targets import TARGETS, Target
from tests.helpers import PNG_1x1, text_of

pytestmark = pytest.mark.anyio

UPLOAD = random.Random(11).randbytes(150_000)
NEW_PHOTO = PNG_1x1


@dataclass
class World:
    target: Target
    sim: Any
    faults: FaultTransport
    client: Client
    root: Path
    case_id: str = ""
    contact_id: str = ""
    files: list[dict[str, Any]] | None = None
    photo: bytes = b""
    secrets: tuple[str, ...] = ()

    async def tool(self, name: str, **arguments: Any) -> tuple[dict[str, Any] | None, str]:
        """(structured result, "") on success; (None, message) on a tool error."""
        result = await self.client.call_tool(name, arguments)
        if result.is_error:
            return None, text_of(result)
        return result.structured_content, ""

    async def read(self, uri: str) -> tuple[bytes | None, str]:
        try:
            result = await self.client.read_resource(uri)
        except MCPError as exc:
            return None, str(exc)
        (content,) = result.contents
        return base64.b64decode(content.blob), ""

    async def listing(self) -> list[dict[str, Any]]:
        result, message = await self.tool("list_case_files", case_id=self.case_id, limit=200)
        assert result is not None, message
        return result["files"]

    async def current_photo(self) -> bytes | None:
        result, message = await self.tool("get_contact_photo", contact_id=self.contact_id)
        assert result is not None, message
        if result["photo"] is None:
            return None
        data, message = await self.read(result["photo"]["resource_uri"])
        assert data is not None, message
        return data


@dataclass
class Rig:
    """One server per vendor for the whole run (building an MCP server costs ~10x a connection); each
    world gets a fresh simulator behind its fault transport, a fresh connection (the backends open
    anew: new login, new session) and an emptied files folder."""

    server: Any
    faults: FaultTransport
    root: Path


class Rigs:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.rigs: dict[str, Rig] = {}

    def get(self, target: Target, sim: Any) -> Rig:
        if target.name not in self.rigs:
            folder = self.base / target.name
            root = folder / "files"
            root.mkdir(parents=True)
            config = folder / "crm-mcp.toml"
            # Retries as configured by default, but without the waits between attempts.
            retries = f"[backends.{target.name}.retries]\nbackoff = 0\n"
            config.write_text(f'{target.toml(sim)}{retries}\n[files]\nroots = ["{root}"]\n', encoding="utf-8")
            settings = load_settings(str(config), env={"CRM_MCP_HOME": str(folder / "home")}, cwd=folder)
            faults = FaultTransport(httpx.ASGITransport(app=sim))
            self.rigs[target.name] = Rig(build_server(settings, transport=faults), faults, root)
        return self.rigs[target.name]


@pytest.fixture(scope="session")
def rigs(tmp_path_factory: pytest.TempPathFactory) -> Rigs:
    return Rigs(tmp_path_factory.mktemp("fault-rigs"))


@asynccontextmanager
async def world(target: Target, rigs: Rigs, *, cold: bool = False) -> AsyncIterator[World]:
    """A fresh simulator and connection, with the case, contact, files and photo looked up. `cold`: the
    files are looked up over a second connection, so this one's backends have listed nothing yet."""
    sim = target.make()
    rig = rigs.get(target, sim)
    rig.faults.inner = httpx.ASGITransport(app=sim)
    rig.faults.disarm()
    shutil.rmtree(rig.root)
    rig.root.mkdir()
    secrets = tuple(value for value in (getattr(sim, "password", None), getattr(sim, "api_key", None)) if value)
    async with Client(rig.server) as client:
        here = World(target, sim, rig.faults, client, rig.root, secrets=secrets)
        found, message = await here.tool("find_records", record_type="case", query="Printer on fire")
        assert found is not None, message
        here.case_id = found["records"][0]["id"]
        found, message = await here.tool("find_records", record_type="contact", query="Alexander Wilson")
        assert found is not None, message
        here.contact_id = found["records"][0]["id"]
        if cold:
            async with Client(rig.server) as other:  # its own backends: nothing learned here
                witness = World(target, sim, rig.faults, other, rig.root, case_id=here.case_id)
                here.files = [file for file in await witness.listing() if file["kind"] == "file"]
        else:
            here.files = [file for file in await here.listing() if file["kind"] == "file"]
        here.photo = await here.current_photo() or b""
        (rig.root / "out").mkdir()
        (rig.root / "new.bin").write_bytes(UPLOAD)
        (rig.root / "face.png").write_bytes(NEW_PHOTO)
        yield here


# ------------------------------------------------------------------------------------ operations
# Each returns None when the outcome is right, else what is wrong. `error` is the tool error text ("" on success).


async def list_files(w: World) -> tuple[str, Callable[[], Awaitable[str | None]]]:
    result, error = await w.tool("list_case_files", case_id=w.case_id, limit=200)

    async def check() -> str | None:
        if result is not None and [f for f in result["files"] if f["kind"] == "file"] != w.files:
            return "the listing differs from the real one"
        return None

    return error, check


async def read_file(w: World) -> tuple[str, Callable[[], Awaitable[str | None]]]:
    assert w.files
    first = w.files[0]
    data, error = await w.read(first["resource_uri"])

    async def check() -> str | None:
        expected, _ = await w.read(first["resource_uri"])
        if data is not None and data != expected:
            return f"read {len(data)} bytes that differ from the file's {len(expected or b'')}"
        return None

    return error, check


async def save_file(w: World) -> tuple[str, Callable[[], Awaitable[str | None]]]:
    assert w.files
    first = w.files[0]
    result, error = await w.tool("save_file", resource_uri=first["resource_uri"], path="out/saved.bin")

    async def check() -> str | None:
        target = w.root / "out" / "saved.bin"
        stray = (
            sorted(p.name for p in (w.root / "out").glob("*") if p.name != "saved.bin")
            if target.parent.exists()
            else []
        )
        if stray:
            return f"temporary files left at the destination: {stray}"
        if result is None:
            return "a partial file was left at the destination" if target.exists() else None
        expected, _ = await w.read(first["resource_uri"])
        if not target.exists() or target.read_bytes() != expected:
            return "the saved file differs from the resource"
        if result["sha256"] != hashlib.sha256(expected or b"").hexdigest():
            return "the reported sha256 is wrong"
        return None

    return error, check


async def upload(w: World) -> tuple[str, Callable[[], Awaitable[str | None]]]:
    result, error = await w.tool("upload_attachment", record_id=w.case_id, file_name="new.bin", path="new.bin")

    async def check() -> str | None:
        new = [f for f in await w.listing() if f["name"] == "new.bin"]
        if result is None:
            return f"the failed upload left {len(new)} file(s) listed" if new else None
        if len(new) != 1:
            return f"{len(new)} copies of the upload are listed"
        data, message = await w.read(new[0]["resource_uri"])
        if data != UPLOAD:
            return f"the uploaded file reads back wrong ({message or len(data or b'')})"
        return None

    return error, check


async def upload_to_contact(w: World) -> tuple[str, Callable[[], Awaitable[str | None]]]:
    result, error = await w.tool(
        "upload_attachment", record_type="contact", record_id=w.contact_id, file_name="note.bin", path="new.bin"
    )

    async def check() -> str | None:
        if result is None:
            return None  # what a failed upload may leave is judged by the inventory
        data, message = await w.read(result["resource_uri"])
        if data != UPLOAD:
            return f"the uploaded file reads back wrong ({message or len(data or b'')})"
        return None

    return error, check


async def bind_photo(w: World) -> tuple[str, Callable[[], Awaitable[str | None]]]:
    result, error = await w.tool("bind_photo", contact_id=w.contact_id, path="face.png")

    async def check() -> str | None:
        try:
            now = await w.current_photo()
        except AssertionError as exc:
            return f"the photo cannot be read after the bind (half-bound): {exc}"
        if result is not None and now != NEW_PHOTO:
            return "bind_photo succeeded but the contact does not show the new photo"
        if result is None and now not in (w.photo, NEW_PHOTO):
            return "after a failed bind the contact shows neither the old nor the new photo"
        return None

    return error, check


async def contact_photo(w: World) -> tuple[str, Callable[[], Awaitable[str | None]]]:
    result, error = await w.tool("get_contact_photo", contact_id=w.contact_id)
    data = b""
    if result is not None and result["photo"] is not None:
        data, error = await w.read(result["photo"]["resource_uri"])  # type: ignore[assignment]

    async def check() -> str | None:
        if result is not None and not error and data != w.photo:
            return "the photo read differs from the real one"
        if result is not None and result["photo"] is None:
            return "the photo was reported missing"
        return None

    return error, check


Operation = Callable[[World], Awaitable[tuple[str, Callable[[], Awaitable[str | None]]]]]
OPERATIONS: dict[str, tuple[Operation, bool]] = {
    "list_case_files": (list_files, False),
    "read resource": (read_file, False),
    "save_file": (save_file, False),
    "upload_attachment": (upload, True),
    "upload_attachment to a contact": (upload_to_contact, True),
    "bind_photo": (bind_photo, True),
    "get_contact_photo": (contact_photo, False),
}
"""name → (operation, whether it writes to the CRM)."""

COLD = frozenset({"list_case_files"})
"""Operations run on a connection that has listed nothing yet: a backend that remembers what a listing
learned (EspoCRM's attachment sizes) must meet the faults on the requests of a first listing."""


def unclear(message: str, secrets: tuple[str, ...]) -> str | None:
    """Why an error message is not a clear tool error, or None."""
    lowered = message.lower()
    if len(message.strip()) < 15:
        return f"too terse: {message!r}"
    for marker in ("traceback", "<?xml", "<html", "<soap", "exception:", 'file "'):
        if marker in lowered:
            return f"leaks internals ({marker!r}): {message[:200]!r}"
    for secret in secrets:
        if secret in message:
            return "contains a secret"
    return None


def applicable(kind: Kind, step: Any, target: Target) -> bool:
    if kind == "cut-upload":
        return step.streamed
    if kind == "expire":
        return target.expire is not None
    return True


async def run_case(target: Target, name: str, kind: Kind, rigs: Rigs) -> list[str]:
    operation, writes = OPERATIONS[name]
    # The clean run: which requests the operation makes, and how much the CRM grows.
    async with world(target, rigs, cold=name in COLD) as w:
        before = target.inventory(w.sim)
        leftovers_before = target.leftovers(w.sim)
        w.faults.mark()
        error, check = await operation(w)
        assert not error, f"the clean run failed: {error}"
        assert await check() is None
        steps = w.faults.since_mark()
        growth = target.inventory(w.sim)
        growth.subtract(before)
        left_by_success = target.leftovers(w.sim) - leftovers_before
    problems: list[str] = []
    for index, step in enumerate(steps, start=1):
        if not applicable(kind, step, target):
            continue
        label = f"{kind} at request {index} ({step.method} {step.path})"
        async with world(target, rigs, cold=name in COLD) as w:
            before = target.inventory(w.sim)
            leftovers_before = target.leftovers(w.sim)
            w.faults.mark()
            w.faults.arm(kind, index, expire=(lambda: target.expire(w.sim)) if target.expire else None)
            error, check = await operation(w)
            w.faults.disarm()
            outcome = Outcome(vendor=target.name, operation=name, kind=kind, step=index, succeeded=not error)
            found: list[str] = []
            if error and (why := unclear(error, w.secrets)):
                found.append(f"{label}: unclear error, {why}")
            if (why := await check()) is not None:
                found.append(f"{label}: {why} (error: {error[:200]!r})")
            after = target.inventory(w.sim)
            delta = Counter(after)
            delta.subtract(before)
            expected = growth if not error else Counter()
            extra = {key: value - expected[key] for key, value in delta.items() if value != expected[key]}
            if writes and extra:
                more = {k: v for k, v in extra.items() if v > 0}
                less = {k: v for k, v in extra.items() if v < 0}
                if more and not error:
                    outcome.duplicates = sum(more.values())
                elif more:
                    outcome.orphans = sum(more.values())
                found.append(f"{label}: the CRM changed by {extra} beyond what the outcome allows (lost: {less})")
            allowed = left_by_success if not error else 0
            outcome.leftovers = max(0, target.leftovers(w.sim) - leftovers_before - allowed)
            outcome.problem = bool(found)
            problems += found
            record(outcome)
    return problems


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("vendor", list(TARGETS))
async def test_fault(vendor: str, operation: str, kind: Kind, rigs: Rigs) -> None:
    problems = await run_case(TARGETS[vendor], operation, kind, rigs)
    assert not problems, "\n".join(problems)
