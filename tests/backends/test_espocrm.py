"""EspoCRM-specific behaviour of the backend, against the simulator (and the simulator's own fidelity)."""

from __future__ import annotations

import base64
import gc
import hashlib
import hmac
import random
import re
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from crm_mcp.backends import espocrm
from crm_mcp.backends.base import BackendContext, Upload
from crm_mcp.backends.espocrm import MAX_SIZE, EspoCrmBackend, EspoCrmSettings, hmac_header
from crm_mcp.config import Settings
from crm_mcp.errors import (
    AuthenticationError,
    BackendError,
    ConfigError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    TooLargeError,
    UnsupportedError,
)
from tests.helpers import PNG_1x1
from tests.simulators.espocrm import (
    API_KEY,
    PASSWORD,
    SECRET,
    EspoSimulator,
    Fault,
    Hold,
    SimUser,
    hmac_signature,
    seeded_simulator,
)

pytestmark = pytest.mark.anyio

URL = "http://espo.test"


def settings(**values: Any) -> EspoCrmSettings:
    base: dict[str, Any] = {"vendor": "espocrm", "url": URL, "api_key": API_KEY, "contact_photo_field": "cPhoto"}
    base.update(values)
    return EspoCrmSettings.model_validate({key: value for key, value in base.items() if value is not None})


def backend_for(sim: EspoSimulator, tmp_path: Path, **values: Any) -> EspoCrmBackend:
    context = BackendContext(home=tmp_path, max_transfer_bytes=50_000_000, transport=httpx.ASGITransport(app=sim))
    return EspoCrmBackend("espo", settings(**values), context)


@pytest.fixture
def sim() -> EspoSimulator:
    return seeded_simulator()


@pytest.fixture
async def crm(sim: EspoSimulator, tmp_path: Path) -> AsyncIterator[EspoCrmBackend]:
    async with backend_for(sim, tmp_path) as opened:
        yield opened


def record(sim: EspoSimulator, entity: str, **match: Any) -> str:
    for record_id, values in sim.records[entity].items():
        if all(values.get(key) == value for key, value in match.items()):
            return record_id
    raise AssertionError(f"no {entity} {match}")


def printer(sim: EspoSimulator) -> str:
    return record(sim, "Case", name="Printer on fire")


async def _chunks(data: bytes, size: int, seen: list[int] | None = None) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        if seen is not None:
            seen.append(start)
        yield data[start : start + size]


def upload_of(data: bytes, name: str = "f.bin", mime: str = "application/octet-stream", **kw: Any) -> Upload:
    return Upload(name=name, mime_type=mime, size=kw.pop("size", len(data)), chunks=_chunks(data, 10_000))


async def read(crm: EspoCrmBackend, file_id: str) -> bytes:
    async with crm.open_file(file_id) as download:
        return b"".join([chunk async for chunk in download.chunks])


def count(sim: EspoSimulator, method: str, pattern: Callable[[str], bool]) -> int:
    return sum(1 for verb, path in sim.requests if verb == method and pattern(path))


# ------------------------------------------------------------------------------------ auth


def test_hmac_header_is_exactly_espocrms() -> None:
    digest = hmac.new(b"s3cret", b"GET /Case/abc", hashlib.sha256).hexdigest()
    expected = base64.b64encode(f"key:{digest}".encode()).decode()
    assert hmac_header("key", "s3cret", "GET", "/api/v1/Case/abc") == expected
    assert hmac_header("key", "s3cret", "GET", "/espo/api/v1/Case/abc") == expected  # installed in a subfolder
    assert hmac_signature("key", "s3cret", "GET", "/Case/abc") == expected  # the simulator agrees


async def test_hmac_signs_path_only_and_works_with_query_strings(sim: EspoSimulator, tmp_path: Path) -> None:
    async with backend_for(sim, tmp_path, api_key=API_KEY + "-h", secret_key=SECRET) as crm:
        found = await crm.find_records("contact", "Alexander Wilson", limit=5)  # a GET with where[...] parameters
        assert [item.title for item in found] == ["Alexander Wilson"]
        assert (await crm.list_case_files(printer(sim), limit=10, cursor=None)).files
        assert "logged in as hmac-user (HMAC)" in await crm.check()


async def test_wrong_hmac_secret_is_an_authentication_error(sim: EspoSimulator, tmp_path: Path) -> None:
    async with backend_for(sim, tmp_path, api_key=API_KEY + "-h", secret_key="wrong-secret") as crm:
        with pytest.raises(AuthenticationError) as caught:
            await crm.check()
    assert "wrong-secret" not in str(caught.value)


async def test_basic_auth_and_check(sim: EspoSimulator, tmp_path: Path) -> None:
    async with backend_for(sim, tmp_path, api_key=None, username="jane", password=PASSWORD) as crm:
        line = await crm.check()
    assert "jane" in line and "Basic" in line and PASSWORD not in line


async def test_two_step_verification_says_to_use_an_api_user(sim: EspoSimulator, tmp_path: Path) -> None:
    sim.add_user(SimUser("otto", type="regular", auth_method=None, password="otto-pass", two_factor=True))
    async with backend_for(sim, tmp_path, api_key=None, username="otto", password="otto-pass") as crm:
        with pytest.raises(AuthenticationError, match=r"two-step verification.*API user") as caught:
            await crm.check()
    assert len(sim.requests) == 1 and "otto-pass" not in str(caught.value)
    assert sim.failed_logins == []  # not a failed login: EspoCRM does not count it towards the lockout


async def test_401_is_never_retried_and_names_the_backend(sim: EspoSimulator, tmp_path: Path) -> None:
    async with backend_for(sim, tmp_path, api_key="not-the-key") as crm:
        with pytest.raises(AuthenticationError) as caught:
            await crm.list_case_files(printer(sim), limit=5, cursor=None)
        assert len(sim.requests) == 1
        with pytest.raises(AuthenticationError):
            await crm.upload_attachment("case", printer(sim), upload_of(b"x" * 100))
        assert len(sim.requests) == 2  # the record check failed; no bytes were sent
    message = str(caught.value)
    assert "'espo'" in message and "401" in message and "not-the-key" not in message


async def test_failed_login_lockout_blocks_everyone(sim: EspoSimulator, tmp_path: Path) -> None:
    """The simulator's lockout: more than 10 failures in 60 s → bare 403 for every request."""
    now = [1000.0]
    sim.clock = lambda: now[0]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=URL) as client:
        for _ in range(11):
            assert (await client.get("/api/v1/App/user", headers={"X-Api-Key": "bad"})).status_code == 401
        blocked = await client.get("/api/v1/App/user", headers={"X-Api-Key": API_KEY})
        assert (blocked.status_code, blocked.content, blocked.headers.get("X-Status-Reason")) == (403, b"", None)
        async with backend_for(sim, tmp_path) as crm:
            with pytest.raises(PermissionDeniedError, match="failed logins"):
                await crm.check()
        now[0] += 61
        assert (await client.get("/api/v1/App/user", headers={"X-Api-Key": API_KEY})).status_code == 200


# ------------------------------------------------------------------------------------ ids


@pytest.mark.parametrize("bad", ["../etc", "a b", "x?y=1", "", "abc/def", "a" * 40, "#1001"])
async def test_malformed_ids_send_nothing(crm: EspoCrmBackend, sim: EspoSimulator, bad: str) -> None:
    calls = [
        crm.list_case_files(bad, limit=5, cursor=None),
        crm.get_contact_photo(bad),
        crm.upload_attachment("case", bad, upload_of(b"x")),
        crm.bind_photo(bad, upload_of(PNG_1x1, "p.png", "image/png")),
    ]
    for call in calls:
        with pytest.raises(InvalidInputError, match="not a valid id"):
            await call
    for opener in (crm.open_file, crm.open_contact_photo):
        with pytest.raises(InvalidInputError, match="not a valid id"):
            async with opener(bad):
                pass
    assert sim.requests == []


# ---------------------------------------------------------------------------------- listing


async def test_listing_uses_the_field_and_sizes(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    page = await crm.list_case_files(printer(sim), limit=10, cursor=None)
    assert [(file.name, file.mime_type) for file in page.files] == [
        ("fire-report.pdf", "application/pdf"),
        ("printer.png", "image/png"),
        ("log.txt", "text/plain"),
    ]
    assert all(file.size and file.created_at for file in page.files)
    assert count(sim, "GET", lambda path: path.endswith("/attachments")) == 0  # the empty-list quirk is avoided


async def test_stream_attachments_are_detected_once_on_8x(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    for _ in range(3):
        await crm.list_case_files(printer(sim), limit=10, cursor=None)
    assert count(sim, "GET", lambda path: path.endswith("/streamAttachments")) == 1


async def test_stream_attachments_are_listed_on_91(tmp_path: Path) -> None:
    sim = seeded_simulator((9, 1))
    async with backend_for(sim, tmp_path) as crm:
        files = (await crm.list_case_files(printer(sim), limit=10, cursor=None)).files
        assert [file.name for file in files][-1] == "readings.csv"
        assert files[-1].size == len(b"t,temp\n1,80\n2,300\n")
        assert await read(crm, files[-1].file_id) == b"t,temp\n1,80\n2,300\n"


async def test_before_91_the_probe_is_a_bare_500_and_is_asked_again_later(
    crm: EspoCrmBackend, sim: EspoSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=URL) as client:
        probe = await client.get(f"/api/v1/Case/{printer(sim)}/streamAttachments", headers={"X-Api-Key": API_KEY})
    assert (probe.status_code, probe.headers.get("X-Status-Reason")) == (500, None)  # what 8.4/9.0 answer
    now = [5000.0]
    monkeypatch.setattr(espocrm, "_monotonic", lambda: now[0])
    assert len((await crm.list_case_files(printer(sim), limit=10, cursor=None)).files) == 3
    sim.version = (9, 1)  # the server is upgraded while crm-mcp keeps running
    sim.post_to_stream("Case", printer(sim), "after-upgrade.txt", "text/plain", b"new")
    assert len((await crm.list_case_files(printer(sim), limit=10, cursor=None)).files) == 3  # still believed 8.x
    now[0] += 901
    files = (await crm.list_case_files(printer(sim), limit=10, cursor=None)).files
    assert [file.name for file in files][-1] == "after-upgrade.txt"
    assert count(sim, "GET", lambda path: path.endswith("/streamAttachments")) == 3  # 1 by hand, 2 by the backend


def attachment_reads(sim: EspoSimulator) -> int:
    """`GET Attachment/{id}` requests so far (the metadata lookups, not downloads)."""
    return count(sim, "GET", lambda path: re.fullmatch(r"/Attachment/\w+", path) is not None)


async def test_second_listing_reads_no_attachment(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    first = await crm.list_case_files(printer(sim), limit=10, cursor=None)
    assert attachment_reads(sim) == 3
    before = len(sim.requests)
    second = await crm.list_case_files(printer(sim), limit=10, cursor=None)
    assert second == first
    assert sim.requests[before:] == [("GET", f"/Case/{printer(sim)}")]  # the case read only (8.x: no stream route)


async def test_new_file_is_looked_up_once_the_rest_come_from_memory(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    await crm.list_case_files(printer(sim), limit=10, cursor=None)
    added = sim.attach_to_case(printer(sim), "late.txt", "text/plain", b"late")
    files = (await crm.list_case_files(printer(sim), limit=10, cursor=None)).files
    assert files[-1].file_id == added and files[-1].size == 4
    assert attachment_reads(sim) == 4


@pytest.mark.parametrize(("status", "reason"), [(404, ""), (403, "")])
async def test_a_failed_lookup_is_not_remembered(
    crm: EspoCrmBackend, sim: EspoSimulator, status: int, reason: str
) -> None:
    log = record(sim, "Case", name="Printer on fire")
    log_id = sim.case_attachment_ids(log)[-1]
    sim.faults.append(Fault("GET", f"/Attachment/{log_id}", status=status, reason=reason))
    first = (await crm.list_case_files(printer(sim), limit=10, cursor=None)).files
    assert first[-1].size is None
    second = (await crm.list_case_files(printer(sim), limit=10, cursor=None)).files
    assert second[-1].size == len(sim.attachments[log_id].data)
    assert count(sim, "GET", lambda path: path == f"/Attachment/{log_id}") == 2


async def test_an_error_fails_the_listing_and_is_not_remembered(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    log_id = sim.case_attachment_ids(printer(sim))[-1]
    sim.faults.append(Fault("GET", f"/Attachment/{log_id}", status=500, reason="Database is gone."))
    with pytest.raises(BackendError, match="Database is gone"):
        await crm.list_case_files(printer(sim), limit=10, cursor=None)
    assert all(file.size for file in (await crm.list_case_files(printer(sim), limit=10, cursor=None)).files)


async def test_an_attachment_this_backend_deletes_is_not_served_from_memory(
    crm: EspoCrmBackend, sim: EspoSimulator
) -> None:
    fire = sim.case_attachment_ids(printer(sim))[0]
    await crm.list_case_files(printer(sim), limit=10, cursor=None)
    await crm._delete_quietly(fire)  # the clean-up path of a failed upload
    assert fire not in sim.attachments
    # Were the id listed again (it is not, on a real server), its size would be asked anew, not remembered.
    sim.add_attachment("other.bin", "application/octet-stream", b"other", parent_type="Case", field="attachments")
    sim.attachments[fire] = sim.attachments.popitem()[1]
    sim.attachments[fire].id, sim.attachments[fire].parent_id = fire, printer(sim)
    files = (await crm.list_case_files(printer(sim), limit=10, cursor=None)).files
    assert [file.size for file in files if file.file_id == fire] == [5]


async def test_a_replaced_photo_is_forgotten(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    wilson = record(sim, "Contact", firstName="Alexander")
    old = sim.records["Contact"][wilson]["cPhotoId"]
    remembered = espocrm._AttachmentMeta(size=1, created_at=None, mime_type="image/png", settled=True)

    async def fetch() -> espocrm._AttachmentMeta:
        return remembered

    await crm._attachment_meta.get(old, fetch)
    assert old in crm._attachment_meta
    await crm.bind_photo(wilson, upload_of(PNG_1x1, "new.png", "image/png"))
    assert old not in sim.attachments and old not in crm._attachment_meta


async def test_concurrent_listings_share_the_lookups(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    sim.latency = 0.01  # the listings overlap while the lookups are under way
    async with anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(partial(crm.list_case_files, printer(sim), limit=10, cursor=None))
    assert attachment_reads(sim) == 3  # not 30


async def test_each_backend_has_its_own_memory(sim: EspoSimulator, tmp_path: Path) -> None:
    """Ids are only unique within one CRM: a second backend (another CRM, or the same one) asks itself."""
    async with backend_for(sim, tmp_path) as first, backend_for(sim, tmp_path) as second:
        await first.list_case_files(printer(sim), limit=10, cursor=None)
        await second.list_case_files(printer(sim), limit=10, cursor=None)
    assert attachment_reads(sim) == 6


class _InFlight(httpx.AsyncBaseTransport):
    """Passes requests to the simulator, counting the most `GET Attachment/{id}` under way at once."""

    def __init__(self, sim: EspoSimulator) -> None:
        self.inner = httpx.ASGITransport(app=sim)
        self.now = self.most = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        lookup = re.fullmatch(r"/api/v1/Attachment/\w+", request.url.path) is not None
        self.now += lookup
        self.most = max(self.most, self.now)
        try:
            return await self.inner.handle_async_request(request)
        finally:
            self.now -= lookup


async def test_one_listing_has_at_most_eight_lookups_in_flight(sim: EspoSimulator, tmp_path: Path) -> None:
    case_id = sim.add_case("Many files")
    for number in range(30):
        sim.attach_to_case(case_id, f"n{number}.txt", "text/plain", b"x" * number)
    sim.latency = 0.005
    transport = _InFlight(sim)
    context = BackendContext(home=tmp_path, max_transfer_bytes=50_000_000, transport=transport)
    async with EspoCrmBackend("espo", settings(), context) as crm:
        files = (await crm.list_case_files(case_id, limit=30, cursor=None)).files
    assert [file.size for file in files] == list(range(30))
    assert transport.most == espocrm._LOOKUPS_PER_LISTING == 8


async def test_memory_is_bounded_least_recently_listed_first(sim: EspoSimulator, tmp_path: Path) -> None:
    async with backend_for(sim, tmp_path) as crm:
        crm._attachment_meta.capacity = 2
        await crm.list_case_files(printer(sim), limit=10, cursor=None)
        assert len(crm._attachment_meta) == 2
        await crm.list_case_files(printer(sim), limit=10, cursor=None)
    assert attachment_reads(sim) > 3  # what no longer fitted was asked again


def _meta(size: int) -> espocrm._AttachmentMeta:
    return espocrm._AttachmentMeta(size=size, created_at=None, mime_type=None, settled=True)


async def test_cache_evicts_the_least_recently_used() -> None:
    cache = espocrm._AttachmentMetaCache(2)
    asked: list[str] = []

    def fetcher(attachment_id: str, size: int) -> Callable[[], Any]:
        async def fetch() -> espocrm._AttachmentMeta:
            asked.append(attachment_id)
            return _meta(size)

        return fetch

    await cache.get("a", fetcher("a", 1))
    await cache.get("b", fetcher("b", 2))
    await cache.get("a", fetcher("a", 1))  # a is used again: b is now the oldest
    await cache.get("c", fetcher("c", 3))
    assert ("a" in cache, "b" in cache, "c" in cache) == (True, False, True)
    assert asked == ["a", "b", "c"]


async def test_default_bound_holds() -> None:
    cache = espocrm._AttachmentMetaCache()
    assert cache.capacity == espocrm._META_CACHE_ENTRIES == 4096

    async def fetch() -> espocrm._AttachmentMeta:
        return _meta(1)

    for number in range(cache.capacity + 100):
        await cache.get(f"id{number}", fetch)
    assert len(cache) == cache.capacity and "id0" not in cache and f"id{cache.capacity + 99}" in cache


async def test_a_lookup_forgotten_while_under_way_is_not_remembered() -> None:
    cache = espocrm._AttachmentMetaCache()
    release = anyio.Event()

    async def fetch() -> espocrm._AttachmentMeta:
        await release.wait()
        return _meta(1)

    async with anyio.create_task_group() as group:
        group.start_soon(cache.get, "a", fetch)
        await anyio.wait_all_tasks_blocked()
        cache.forget("a")  # deleted while its metadata was being read
        release.set()
    assert "a" not in cache


async def test_waiters_ask_themselves_when_the_shared_lookup_fails() -> None:
    cache = espocrm._AttachmentMetaCache()
    release = anyio.Event()
    calls: list[str] = []

    async def failing() -> espocrm._AttachmentMeta:
        calls.append("first")
        await release.wait()
        raise BackendError("the CRM broke")

    async def working() -> espocrm._AttachmentMeta:
        calls.append("second")
        return _meta(7)

    results: list[espocrm._AttachmentMeta | None] = []

    async def leader() -> None:
        with pytest.raises(BackendError):
            await cache.get("a", failing)

    async def waiter() -> None:
        results.append(await cache.get("a", working))

    async with anyio.create_task_group() as group:
        group.start_soon(leader)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert calls == ["first", "second"] and results == [_meta(7)] and "a" in cache


def test_an_attachment_still_being_uploaded_is_not_remembered() -> None:
    meta = espocrm._attachment_meta({"id": "a", "size": 10, "isBeingUploaded": True, "type": "text/plain"})
    assert meta is not None and meta.size == 10 and not meta.settled
    assert espocrm._attachment_meta({"id": "a", "size": 10, "isBeingUploaded": False}).settled  # type: ignore[union-attr]
    assert espocrm._attachment_meta([]) is None


async def test_paging_and_bad_cursor(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    first = await crm.list_case_files(printer(sim), limit=2, cursor=None)
    assert len(first.files) == 2 and first.next_cursor
    second = await crm.list_case_files(printer(sim), limit=2, cursor=first.next_cursor)
    assert [file.name for file in second.files] == ["log.txt"] and second.next_cursor is None
    other = record(sim, "Case", name="Toner smudges")
    with pytest.raises(InvalidInputError, match="cursor"):
        await crm.list_case_files(other, limit=2, cursor=first.next_cursor)
    with pytest.raises(InvalidInputError, match="cursor"):
        await crm.list_case_files(printer(sim), limit=2, cursor="garbage")


async def test_missing_case_and_file_are_not_found(crm: EspoCrmBackend) -> None:
    with pytest.raises(NotFoundError, match="case 0123456789abcdef0 was not found"):
        await crm.list_case_files("0123456789abcdef0", limit=5, cursor=None)
    with pytest.raises(NotFoundError, match="file"):
        async with crm.open_file("0123456789abcdef0"):
            pass


async def test_max_size_never_above_200(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    await crm.find_records("contact", "a", limit=1000)
    await crm.find_records("case", "1001", limit=500)
    sizes = [
        int(value) for query in sim.queries for key, value in httpx.QueryParams(query).multi_items() if key == "maxSize"
    ]
    assert sizes and max(sizes) <= MAX_SIZE
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=URL) as client:
        refused = await client.get("/api/v1/Contact", params={"maxSize": 201}, headers={"X-Api-Key": API_KEY})
    assert refused.status_code == 403 and "200" in refused.headers["X-Status-Reason"]


async def test_find_case_by_number_first(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    found = await crm.find_records("case", "#1001", limit=5)
    assert [item.id for item in found] == [printer(sim)]
    assert found[0].title == "#1001 · Printer on fire"
    assert await crm.find_records("case", "o'brien%_", limit=5) == []  # values are parameters, never syntax


async def test_find_treats_like_wildcards_literally(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    """EspoCRM's `contains` is SQL LIKE with the value unescaped; the backend escapes `%`, `_` and `\\`."""
    sim.add_contact("Percy", "100% Cotton")
    sim.add_contact("Under", "Score_Man")
    sim.add_contact("Back", "Slash\\Name")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=URL) as client:
        raw = await client.get(
            "/api/v1/Contact",
            params={"where[0][type]": "contains", "where[0][attribute]": "name", "where[0][value]": "%"},
            headers={"X-Api-Key": API_KEY},
        )
    assert raw.json()["total"] == len(sim.records["Contact"])  # unescaped, '%' matches every contact
    assert [item.title for item in await crm.find_records("contact", "%", limit=50)] == ["Percy 100% Cotton"]
    assert [item.title for item in await crm.find_records("contact", "_", limit=50)] == ["Under Score_Man"]
    assert [item.title for item in await crm.find_records("contact", "h\\n", limit=50)] == ["Back Slash\\Name"]
    assert await crm.find_records("case", "%", limit=50) == []
    assert await crm.find_records("contact", "x&where[1][type]=isNotNull", limit=50) == []  # only ever a value


async def test_attachment_list_is_admin_only(sim: EspoSimulator) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=URL) as client:
        refused = await client.get("/api/v1/Attachment", headers={"X-Api-Key": API_KEY})
        admin = base64.b64encode(f"admin:{PASSWORD}-admin".encode()).decode()
        allowed = await client.get("/api/v1/Attachment", headers={"Authorization": f"Basic {admin}"})
    assert (refused.status_code, refused.content) == (403, b"")
    assert allowed.status_code == 200 and allowed.json()["total"] >= 4


# ---------------------------------------------------------------------------------- uploads


async def test_upload_keeps_existing_attachments(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    before = sim.case_attachment_ids(printer(sim))
    entry = await crm.upload_attachment("case", printer(sim), upload_of(b"new file", "new.txt", "text/plain"))
    assert sim.case_attachment_ids(printer(sim)) == [*before, entry.file_id]
    assert sim.attachments[entry.file_id].parent_id == printer(sim)
    assert await read(crm, entry.file_id) == b"new file"


async def test_two_concurrent_uploads_keep_everything(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    before = sim.case_attachment_ids(printer(sim))
    entries: list[str] = []
    sim.latency = 0.01  # both uploads read the case before either links

    async def one(index: int) -> None:
        entry = await crm.upload_attachment("case", printer(sim), upload_of(b"x" * 50_000, f"c{index}.bin"))
        entries.append(entry.file_id)

    async with anyio.create_task_group() as group:
        for index in range(2):
            group.start_soon(one, index)
    assert set(sim.case_attachment_ids(printer(sim))) == {*before, *entries}


async def test_many_concurrent_uploads_from_one_server_keep_everything(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    """More writers than one retry can absorb: links to one case are serialised within a server."""
    before = sim.case_attachment_ids(printer(sim))
    entries: list[str] = []
    sim.latency = 0.005

    async def one(index: int) -> None:
        entries.append((await crm.upload_attachment("case", printer(sim), upload_of(b"y", f"m{index}.txt"))).file_id)

    async with anyio.create_task_group() as group:
        for index in range(6):
            group.start_soon(one, index)
    assert sorted(sim.case_attachment_ids(printer(sim))) == sorted([*before, *entries]) and len(entries) == 6


async def test_two_servers_uploading_to_one_case_on_91_keep_everything(tmp_path: Path) -> None:
    """Two crm-mcp replicas share no lock; on 9.1+ X-Version-Number turns the losing write into a 409,
    and the re-read and retry keep both files."""
    sim = seeded_simulator((9, 1))
    sim.latency = 0.01  # both read the case before either writes
    case_id = printer(sim)
    before = sim.case_attachment_ids(case_id)
    entries: list[str] = []

    async def replica(index: int) -> None:
        async with backend_for(sim, tmp_path / str(index)) as crm:
            entries.append((await crm.upload_attachment("case", case_id, upload_of(b"r", f"r{index}.txt"))).file_id)

    async with anyio.create_task_group() as group:
        for index in range(2):
            group.start_soon(replica, index)
    assert sorted(sim.case_attachment_ids(case_id)) == sorted([*before, *entries]) and len(entries) == 2


async def test_concurrent_change_is_reread_and_retried_once(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    before = sim.case_attachment_ids(printer(sim))
    sim.concurrent_link_changes = 1  # another client's stale write lands right after ours
    entry = await crm.upload_attachment("case", printer(sim), upload_of(b"mine", "mine.txt", "text/plain"))
    after = sim.case_attachment_ids(printer(sim))
    rival = next(item.id for item in sim.attachments.values() if item.name == "rival.txt")
    assert set(after) == {*before, rival, entry.file_id}
    assert count(sim, "PUT", lambda path: path.startswith("/Case/")) == 2


async def test_stale_write_on_91_is_a_conflict_then_retried(tmp_path: Path) -> None:
    """9.1+ Case has optimistic concurrency: X-Version-Number makes a write based on an old list a 409
    instead of silently unlinking the file another client linked meanwhile."""
    sim = seeded_simulator((9, 1))
    case_id = printer(sim)
    before = sim.case_attachment_ids(case_id)
    sim.rival_links_before_put = 1
    async with backend_for(sim, tmp_path) as crm:
        entry = await crm.upload_attachment("case", case_id, upload_of(b"mine", "mine.txt", "text/plain"))
    rival = next(item.id for item in sim.attachments.values() if item.name == "rival-linked.txt")
    after = sim.case_attachment_ids(case_id)
    assert sorted(after) == sorted([*before, rival, entry.file_id]) and len(after) == len(before) + 2
    assert count(sim, "PUT", lambda path: path == f"/Case/{case_id}") == 2


async def test_simulator_version_number_is_a_header_not_a_body_field(tmp_path: Path) -> None:
    sim = seeded_simulator((9, 1))
    case_id = printer(sim)
    headers = {"X-Api-Key": API_KEY}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=URL) as client:
        case = (await client.get(f"/api/v1/Case/{case_id}", headers=headers)).json()
        version, ids = case["versionNumber"], case["attachmentsIds"]
        ignored = await client.put(
            f"/api/v1/Case/{case_id}", json={"attachmentsIds": ids[:2], "versionNumber": version - 1}, headers=headers
        )
        assert ignored.status_code == 200  # EspoCRM drops versionNumber from the input
        stale = await client.put(
            f"/api/v1/Case/{case_id}",
            json={"attachmentsIds": ids[:1]},
            headers={**headers, "X-Version-Number": str(version)},
        )
        assert (stale.status_code, stale.headers["X-Status-Reason"]) == (409, "modified")
        assert stale.json() == {"values": {"attachmentsIds": ids[:2]}, "versionNumber": version + 1}
        same = await client.put(
            f"/api/v1/Case/{case_id}",
            json={"attachmentsIds": ids[:2]},
            headers={**headers, "X-Version-Number": str(version)},
        )
        assert same.status_code == 200  # a stale version that changes nothing is no conflict
    old = seeded_simulator((8, 4))  # 8.x Case has no optimistic concurrency unless an admin enables it
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=old), base_url=URL) as client:
        case = (await client.get(f"/api/v1/Case/{printer(old)}", headers=headers)).json()
        unchecked = await client.put(
            f"/api/v1/Case/{printer(old)}",
            json={"attachmentsIds": case["attachmentsIds"][:1]},
            headers={**headers, "X-Version-Number": "1"},
        )
    assert "versionNumber" not in case and unchecked.status_code == 200


async def test_linking_a_missing_attachment_is_refused(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    case_id = printer(sim)
    before = sim.case_attachment_ids(case_id)
    headers = {"X-Api-Key": API_KEY}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=URL) as client:
        refused = await client.put(
            f"/api/v1/Case/{case_id}", json={"attachmentsIds": [*before, "0123456789abcdef0"]}, headers=headers
        )
        photo = await client.put(
            f"/api/v1/Contact/{record(sim, 'Contact', firstName='John')}",
            json={"cPhotoId": "0123456789abcdef0"},
            headers=headers,
        )
    assert refused.status_code == 403
    assert refused.headers["X-Status-Reason"] == (
        "Can't relate with non-existing record. entity type: Case, link: attachments."
    )
    assert refused.json()["messageTranslation"]["label"] == "cannotRelateNonExisting"
    assert (photo.status_code, photo.headers["X-Status-Reason"]) == (
        403,
        "Can't relate with non-existing record. entity type: Contact, link: cPhoto.",
    )
    assert sim.case_attachment_ids(case_id) == before


async def test_persistent_concurrent_change_fails_and_leaves_no_orphan(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    sim.concurrent_link_changes = 2
    with pytest.raises(ConflictError, match="kept changing"):
        await crm.upload_attachment("case", printer(sim), upload_of(b"mine", "mine.txt", "text/plain"))
    assert not [item for item in sim.attachments.values() if item.name == "mine.txt"]


async def test_optimistic_concurrency_409_is_retried(tmp_path: Path) -> None:
    sim = seeded_simulator()
    sim.optimistic_concurrency = True
    sim.faults.append(Fault("PUT", r"/Case/\w+", status=409, reason="modified"))
    async with backend_for(sim, tmp_path) as crm:
        entry = await crm.upload_attachment("case", printer(sim), upload_of(b"v", "v.txt", "text/plain"))
    assert entry.file_id in sim.case_attachment_ids(printer(sim))


async def test_failed_link_deletes_the_upload(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    before = set(sim.attachments)
    sim.faults.append(Fault("PUT", r"/Case/\w+", status=500, reason="Database is gone."))
    with pytest.raises(BackendError, match="Database is gone"):
        await crm.upload_attachment("case", printer(sim), upload_of(b"orphan?", "o.txt", "text/plain"))
    assert set(sim.attachments) == before
    assert count(sim, "DELETE", lambda path: path.startswith("/Attachment/")) == 1


async def test_cancelled_link_leaves_no_orphan(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    """A client that cancels the tool call while the file is being linked: the upload is removed anyway."""
    before = set(sim.attachments)
    sim.latency = 0.001  # every call really waits, so an unshielded clean-up would be cancelled too
    hold = Hold("PUT", r"/Case/\w+")
    sim.holds.append(hold)
    async with anyio.create_task_group() as group:
        group.start_soon(crm.upload_attachment, "case", printer(sim), upload_of(b"late", "late.txt", "text/plain"))
        await hold.reached.wait()
        group.cancel_scope.cancel()
    assert set(sim.attachments) == before
    assert count(sim, "DELETE", lambda path: path.startswith("/Attachment/")) == 1


@pytest.mark.parametrize("content_type", ["application/json", "text/html"])
async def test_json_error_bodies_are_surfaced(crm: EspoCrmBackend, sim: EspoSimulator, content_type: str) -> None:
    body = b'{"messageTranslation":{"label":"validationFailure","scope":null,"data":{"field":"name","type":"pattern"}}}'
    sim.faults.append(
        Fault("PUT", r"/Case/\w+", status=400, reason="validationFailure", body=body, content_type=content_type)
    )
    with pytest.raises(InvalidInputError) as caught:
        await crm.upload_attachment("case", printer(sim), upload_of(b"v", "v.txt", "text/plain"))
    assert "to link the file to case" in str(caught.value)
    assert ": validationFailure (field=name, type=pattern) (HTTP 400)" in str(caught.value)


async def test_overlong_names_and_types_are_fitted_not_refused(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    long_name = "r" * 300 + ".pdf"
    long_type = "application/pdf; " + "x" * 120
    entry = await crm.upload_attachment("case", printer(sim), upload_of(b"%PDF-1.4", long_name, long_type))
    stored = sim.attachments[entry.file_id]
    assert len(stored.name) == 255 and stored.name.endswith("….pdf") and stored.type == "application/pdf"
    assert entry.name == stored.name  # the tool tells the user what the CRM stored
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=URL) as client:
        base = {"type": "text/plain", "role": "Attachment", "parentType": "Case", "field": "attachments"}
        base["file"] = "data:text/plain;base64,YQ=="
        unnamed = await client.post("/api/v1/Attachment", json=base, headers={"X-Api-Key": API_KEY})
        too_long = await client.post(
            "/api/v1/Attachment", json={**base, "name": long_name}, headers={"X-Api-Key": API_KEY}
        )
    assert (unnamed.status_code, unnamed.headers["X-Status-Reason"]) == (400, "validationFailure")
    assert unnamed.json()["messageTranslation"]["data"] == {"field": "name", "type": "required"}
    assert too_long.json()["messageTranslation"]["data"] == {"field": "name", "type": "maxLength"}


class _LoseAnswers(httpx.AsyncBaseTransport):
    """Passes requests to the simulator; the next request matching the first rule (method, path regex)
    is acted on by the server but its answer is lost (the connection breaks), as after a proxy timeout
    or a reset; then the next rule is armed."""

    def __init__(self, sim: EspoSimulator, *rules: tuple[str, str]) -> None:
        self.inner = httpx.ASGITransport(app=sim)
        self.rules = list(rules)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        path = request.url.path.removeprefix("/api/v1")
        if self.rules and self.rules[0][0] == request.method and re.fullmatch(self.rules[0][1], path):
            self.rules.pop(0)
            await response.aclose()
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


def lossy(sim: EspoSimulator, tmp_path: Path, *rules: tuple[str, str]) -> EspoCrmBackend:
    context = BackendContext(home=tmp_path, max_transfer_bytes=50_000_000, transport=_LoseAnswers(sim, *rules))
    return EspoCrmBackend("espo", settings(), context)


@pytest.mark.parametrize("record_type", ["case", "account"])
async def test_lost_link_answer_is_checked_not_undone(sim: EspoSimulator, tmp_path: Path, record_type: str) -> None:
    """The link went through but its answer was lost: the record is re-read, the upload reported as done
    (an error would invite a duplicate), and the linked file is not deleted."""
    record_id = printer(sim) if record_type == "case" else record(sim, "Account", name="Acme Printing")
    before = set(sim.attachments)
    rule = ("PUT", r"/Case/\w+") if record_type == "case" else ("POST", "/Note")
    async with lossy(sim, tmp_path, rule) as crm:
        entry = await crm.upload_attachment(record_type, record_id, upload_of(b"once", "once.txt", "text/plain"))
    assert set(sim.attachments) == {*before, entry.file_id}
    if record_type == "case":
        assert entry.file_id in sim.case_attachment_ids(record_id)
    else:
        assert [item.id for item in sim.stream_attachments("Account", record_id)] == [entry.file_id]


async def test_lost_photo_answer_never_leaves_a_dangling_photo(sim: EspoSimulator, tmp_path: Path) -> None:
    """EspoCRM deleted the old photo when the new one was bound; deleting the new one because the answer
    was lost would leave the contact pointing at nothing."""
    wilson = record(sim, "Contact", firstName="Alexander")
    async with lossy(sim, tmp_path, ("PUT", r"/Contact/\w+")) as crm:
        photo = await crm.bind_photo(wilson, upload_of(PNG_1x1, "new.png", "image/png"))
    assert sim.records["Contact"][wilson]["cPhotoId"] == photo.photo_id and photo.photo_id in sim.attachments
    best = record(sim, "Contact", firstName="John")
    # The re-check's answers are lost as often as a read is tried (retries.attempts): it cannot be checked.
    async with lossy(sim, tmp_path, ("PUT", r"/Contact/\w+"), *[("GET", r"/Contact/\w+")] * 3) as crm:
        with pytest.raises(BackendError, match="connection broke"):
            await crm.bind_photo(best, upload_of(PNG_1x1, "unsure.png", "image/png"))
    bound = sim.records["Contact"][best]["cPhotoId"]
    assert bound in sim.attachments  # could not be checked: kept, so the contact's photo is whole


async def test_upload_to_contact_goes_to_its_stream(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    best = record(sim, "Contact", firstName="John")
    entry = await crm.upload_attachment("contact", best, upload_of(b"hello", "hi.txt", "text/plain"))
    assert [item.id for item in sim.stream_attachments("Contact", best)] == [entry.file_id]
    assert await read(crm, entry.file_id) == b"hello"


async def test_upload_body_is_streamed_not_buffered(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    payload = random.Random(1).randbytes(1_000_001)
    yielded: list[int] = []
    received_while: list[int] = []
    sim.on_body_chunk = lambda size: received_while.append(len(yielded))
    upload = Upload("big.bin", "application/octet-stream", len(payload), _chunks(payload, 65_536, yielded))
    entry = await crm.upload_attachment("case", printer(sim), upload)
    total = len(yielded)
    assert total == 16
    # The simulator got body pieces while the source was still being read: never one whole-file body.
    assert received_while[0] <= 1 and len(received_while) > total // 2
    assert bytes(sim.attachments[entry.file_id].data) == payload


async def test_chunked_upload_above_the_threshold(sim: EspoSimulator, tmp_path: Path) -> None:
    payload = random.Random(2).randbytes(5_000)
    async with backend_for(sim, tmp_path, chunk_threshold_bytes=2_000, chunk_size_bytes=1_024) as crm:
        entry = await crm.upload_attachment("case", printer(sim), upload_of(payload, "chunked.bin"))
        assert await read(crm, entry.file_id) == payload
    assert count(sim, "POST", lambda path: path.startswith("/Attachment/chunk/")) == 5
    assert entry.file_id in sim.case_attachment_ids(printer(sim))
    assert not sim.attachments[entry.file_id].being_uploaded


async def test_chunk_body_is_the_data_url_text_encoded_as_it_is_sent() -> None:
    data = random.Random(3).randbytes(espocrm.BASE64_PIECE * 2 + 7)  # pieces, and a length not a multiple of 3
    body = espocrm._ChunkBody(b"data:application/pdf;base64,", data)
    expected = b"data:application/pdf;base64," + base64.b64encode(data)
    assert len(body) == len(expected)
    assert b"".join([piece async for piece in body]) == expected
    assert b"".join(body) == expected  # sendable again (a retry) until released
    assert isinstance(body, httpx.ByteStream)  # what the retry transport accepts as replayable
    body.release()
    with pytest.raises(RuntimeError, match="released"):
        b"".join(body)


async def test_a_chunk_refused_with_429_is_sent_again(sim: EspoSimulator, tmp_path: Path) -> None:
    payload = random.Random(4).randbytes(5_000)
    sim.faults.append(Fault("POST", r"/Attachment/chunk/\w+", status=429, retry_after=0))
    async with backend_for(sim, tmp_path, chunk_threshold_bytes=2_000, chunk_size_bytes=1_024) as crm:
        entry = await crm.upload_attachment("case", printer(sim), upload_of(payload, "again.bin"))
        assert await read(crm, entry.file_id) == payload
    assert count(sim, "POST", lambda path: path.startswith("/Attachment/chunk/")) == 6  # 5 chunks, one sent twice


async def test_sent_chunk_bodies_are_released(sim: EspoSimulator, tmp_path: Path) -> None:
    """httpx keeps finished requests in reference cycles until the cyclic collector runs: with it off, no
    request may still hold a chunk's bytes after the upload (eight 5.3 MiB bodies were held during a 200 MiB upload)."""
    payload = random.Random(5).randbytes(20_000)
    gc.collect()
    gc.disable()
    try:
        async with backend_for(sim, tmp_path, chunk_threshold_bytes=2_000, chunk_size_bytes=4_096) as crm:
            entry = await crm.upload_attachment("case", printer(sim), upload_of(payload, "held.bin"))
            bodies = [o for o in gc.get_objects() if isinstance(o, espocrm._ChunkBody)]
            held = sum(len(o._data) for o in bodies) + sum(
                len(o._stream) for o in gc.get_objects() if type(o) is httpx.ByteStream
            )
    finally:
        gc.enable()
    assert held < 4_096
    assert sim.attachments[entry.file_id].size == len(payload)


async def test_chunks_are_sent_while_the_source_is_still_being_read(sim: EspoSimulator, tmp_path: Path) -> None:
    payload = random.Random(3).randbytes(8_192)
    chunk_requests_at_each_read: list[int] = []

    async def source() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 256):
            chunk_requests_at_each_read.append(count(sim, "POST", lambda path: path.startswith("/Attachment/chunk/")))
            yield payload[start : start + 256]

    async with backend_for(sim, tmp_path, chunk_threshold_bytes=2_000, chunk_size_bytes=1_024) as crm:
        entry = await crm.upload_attachment("case", printer(sim), Upload("s.bin", "x/y", len(payload), source()))
    assert bytes(sim.attachments[entry.file_id].data) == payload
    # The last 1 KiB of the source was read only after the first seven chunks had reached the server:
    # the backend holds one chunk, never the file.
    assert chunk_requests_at_each_read[0] == 0 and chunk_requests_at_each_read[-1] == 7


async def test_chunked_photo_is_checked_at_the_last_chunk_and_repaired(sim: EspoSimulator, tmp_path: Path) -> None:
    best = record(sim, "Contact", firstName="John")
    async with backend_for(sim, tmp_path, chunk_threshold_bytes=16, chunk_size_bytes=1_024) as crm:
        photo = await crm.bind_photo(best, upload_of(PNG_1x1, "face.JPG", "image/jpeg"))
    stored = sim.attachments[photo.photo_id]
    assert (stored.name, stored.type, stored.being_uploaded) == ("face.png", "image/png", False)
    assert count(sim, "POST", lambda path: path.startswith("/Attachment/chunk/")) == 1
    assert sim.records["Contact"][best]["cPhotoId"] == photo.photo_id


async def test_simulator_removes_a_chunked_image_whose_bytes_disagree(sim: EspoSimulator) -> None:
    headers = {"X-Api-Key": API_KEY}
    start = {
        "name": "p.jpg",
        "type": "image/jpeg",
        "role": "Attachment",
        "relatedType": "Contact",
        "field": "cPhoto",
        "isBeingUploaded": True,
        "size": len(PNG_1x1),
    }
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=URL) as client:
        created = (await client.post("/api/v1/Attachment", headers=headers, json=start)).json()["id"]
        body = b"data:image/jpeg;base64," + base64.b64encode(PNG_1x1)
        refused = await client.post(f"/api/v1/Attachment/chunk/{created}", headers=headers, content=body)
    assert (refused.status_code, refused.headers["X-Status-Reason"]) == (
        403,
        "Detected mime type does not correspond to extension.",
    )
    assert created not in sim.attachments


async def test_simulator_chunks_without_a_declared_size_mismatch(sim: EspoSimulator) -> None:
    headers = {"X-Api-Key": API_KEY}
    start = {"name": "a.bin", "type": "x/y", "role": "Attachment", "parentType": "Case", "field": "attachments"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=URL) as client:
        created = await client.post("/api/v1/Attachment", headers=headers, json={**start, "isBeingUploaded": True})
        chunk = await client.post(
            f"/api/v1/Attachment/chunk/{created.json()['id']}", headers=headers, content=b"data:x/y;base64,YWJj"
        )
        empty = await client.post(f"/api/v1/Attachment/chunk/{created.json()['id']}", headers=headers, content=b"")
    assert created.status_code == 200
    assert (chunk.status_code, chunk.headers["X-Status-Reason"]) == (500, "File size mismatch.")
    assert (empty.status_code, empty.headers.get("X-Status-Reason")) == (400, None)


async def test_failed_stream_post_deletes_the_upload(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    before = set(sim.attachments)
    sim.faults.append(Fault("POST", r"/Note", status=403, reason="No access to parent."))
    with pytest.raises(PermissionDeniedError, match="No access to parent"):
        await crm.upload_attachment("account", record(sim, "Account", name="Acme Printing"), upload_of(b"inv"))
    assert set(sim.attachments) == before
    assert count(sim, "DELETE", lambda path: path.startswith("/Attachment/")) == 1


async def test_truncated_chunked_upload_leaves_nothing(sim: EspoSimulator, tmp_path: Path) -> None:
    before = set(sim.attachments)
    async with backend_for(sim, tmp_path, chunk_threshold_bytes=2_000, chunk_size_bytes=1_024) as crm:
        with pytest.raises(BackendError, match="truncated"):
            await crm.upload_attachment("case", printer(sim), upload_of(b"y" * 3_000, "short.bin", size=9_000))
    assert set(sim.attachments) == before


async def test_simulator_chunk_errors(sim: EspoSimulator) -> None:
    headers = {"X-Api-Key": API_KEY}
    start = {
        "name": "a.bin",
        "type": "application/octet-stream",
        "role": "Attachment",
        "parentType": "Case",
        "field": "attachments",
        "isBeingUploaded": True,
        "size": 3,
    }
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=URL) as client:
        first = (await client.post("/api/v1/Attachment", headers=headers, json=start)).json()["id"]
        chunk_url = f"/api/v1/Attachment/chunk/{first}"
        assert (await client.post(chunk_url, headers=headers, content=b"data:x/y;base64,YWJj")).json() is True
        done = await client.post(chunk_url, headers=headers, content=b"data:x/y;base64,YWJj")
        assert (done.status_code, done.headers["X-Status-Reason"]) == (403, "Attachment is not being-uploaded.")
        second = (await client.post("/api/v1/Attachment", headers=headers, json=start)).json()["id"]
        too_much = await client.post(
            f"/api/v1/Attachment/chunk/{second}", headers=headers, content=b"data:x/y;base64,YWJjZA=="
        )
        assert (too_much.status_code, too_much.headers["X-Status-Reason"]) == (500, "File size mismatch.")
        bad = await client.post(f"/api/v1/Attachment/chunk/{second}", headers=headers, content=b"YWJj")
        assert (bad.status_code, bad.headers["X-Status-Reason"]) == (400, "Bad file data.")


async def test_simulator_create_checks(sim: EspoSimulator) -> None:
    headers = {"X-Api-Key": API_KEY}
    base = {"name": "a.txt", "type": "text/plain", "file": "data:text/plain;base64,YQ=="}
    cases = [
        ({"role": "Attachment"}, 400, "No `field` and `parentType`."),
        ({"role": "Avatar", "parentType": "Case", "field": "attachments"}, 403, "Role not allowed."),
        ({"role": "Attachment", "parentType": "Case", "field": "nope"}, 403, "Field 'nope' does not exist."),
        (
            {"role": "Attachment", "parentType": "Case", "field": "attachments", "file": 1},
            400,
            "Non-string file contents.",
        ),
    ]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=URL) as client:
        for extra, status, reason in cases:
            answer = await client.post("/api/v1/Attachment", headers=headers, json={**base, **extra})
            assert (answer.status_code, answer.headers["X-Status-Reason"]) == (status, reason)
        created = await client.post(
            "/api/v1/Attachment",
            headers=headers,
            json={**base, "role": "Attachment", "parentType": "Case", "field": "attachments", "parentId": "x"},
        )
    assert created.json()["parentId"] is None  # cleared on create: linking is a second call


async def test_too_large_reasons_become_too_large_errors(sim: EspoSimulator, tmp_path: Path) -> None:
    sim.attachment_max_size = 10
    async with backend_for(sim, tmp_path, chunk_threshold_bytes=50) as crm:
        with pytest.raises(TooLargeError, match="should not exceed"):
            await crm.upload_attachment("case", printer(sim), upload_of(b"z" * 20))
        with pytest.raises(TooLargeError, match="attachmentUploadMaxSize"):
            await crm.upload_attachment("case", printer(sim), upload_of(b"z" * 100))


async def test_get_retries_503_with_retry_after_but_not_posts(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    sim.faults.append(Fault("GET", r"/Case/\w+", status=503, retry_after=0))
    assert (await crm.list_case_files(printer(sim), limit=5, cursor=None)).files
    sim.faults.append(Fault("POST", r"/Attachment", status=503, retry_after=0))
    with pytest.raises(BackendError, match="503"):
        await crm.upload_attachment("case", printer(sim), upload_of(b"q"))
    assert count(sim, "POST", lambda path: path == "/Attachment") == 1


async def test_dropped_download_is_an_error_not_a_short_file(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    file_id = sim.case_attachment_ids(printer(sim))[0]
    sim.drop_download = 1
    with pytest.raises(BackendError, match="of"):
        await read(crm, file_id)
    assert len(await read(crm, file_id)) == sim.attachments[file_id].size


# ---------------------------------------------------------------------------------- photos


async def test_photo_extension_and_type_are_fixed_from_the_bytes(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    best = record(sim, "Contact", firstName="John")
    photo = await crm.bind_photo(best, upload_of(PNG_1x1, "face.jpg", "image/jpeg"))
    stored = sim.attachments[photo.photo_id]
    assert (stored.name, stored.type, photo.mime_type) == ("face.png", "image/png", "image/png")
    assert (stored.related_type, stored.related_id, stored.field) == ("Contact", best, "cPhoto")
    assert (await crm.get_contact_photo(best)) == photo


async def test_rebinding_deletes_the_old_photo(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    wilson = record(sim, "Contact", firstName="Alexander")
    old = sim.records["Contact"][wilson]["cPhotoId"]
    photo = await crm.bind_photo(wilson, upload_of(PNG_1x1, "PHOTO.PNG", "image/png"))
    assert old not in sim.attachments and sim.attachments[photo.photo_id].name == "PHOTO.PNG"


async def test_non_image_photo_is_refused_before_upload(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    with pytest.raises(InvalidInputError, match="JPEG, PNG"):
        await crm.bind_photo(record(sim, "Contact", firstName="John"), upload_of(b"plain text", "x.png", "image/png"))
    assert count(sim, "POST", lambda path: path == "/Attachment") == 0


@pytest.mark.parametrize(
    ("name", "mime", "reason"),
    [
        ("photo.jpg", "image/png", "Passed type does not correspond to extension."),
        ("photo.jpg", "image/jpeg", "Detected mime type does not correspond to extension."),
        ("photo", "image/png", "Not allowed file type."),
    ],
)
async def test_simulator_image_checks(sim: EspoSimulator, name: str, mime: str, reason: str) -> None:
    body = {
        "name": name,
        "type": mime,
        "role": "Attachment",
        "relatedType": "Contact",
        "field": "cPhoto",
        "file": "data:image/png;base64," + base64.b64encode(PNG_1x1).decode(),
    }
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=URL) as client:
        refused = await client.post("/api/v1/Attachment", json=body, headers={"X-Api-Key": API_KEY})
    assert (refused.status_code, refused.headers["X-Status-Reason"]) == (403, reason)


async def test_failed_photo_link_deletes_the_upload(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    before = set(sim.attachments)
    sim.faults.append(Fault("PUT", r"/Contact/\w+", status=403, reason="No edit access."))
    with pytest.raises(PermissionDeniedError, match="No edit access"):
        await crm.bind_photo(record(sim, "Contact", firstName="John"), upload_of(PNG_1x1, "p.png", "image/png"))
    assert set(sim.attachments) == before


async def test_missing_photo_field_tells_the_admin_how_to_add_it(tmp_path: Path) -> None:
    sim = seeded_simulator()
    sim.photo_field = None
    best = record(sim, "Contact", firstName="John")
    async with backend_for(sim, tmp_path) as crm:
        with pytest.raises(UnsupportedError, match=r"POST /api/v1/Admin/fieldManager/Contact") as caught:
            await crm.bind_photo(best, upload_of(PNG_1x1, "p.png", "image/png"))
        assert "cPhoto" in str(caught.value)
        admin = base64.b64encode(f"admin:{PASSWORD}-admin".encode()).decode()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=URL) as client:
            added = await client.post(
                "/api/v1/Admin/fieldManager/Contact",
                json={"name": "photo", "type": "image", "label": "Photo"},
                headers={"Authorization": f"Basic {admin}"},
            )
        assert added.json()["name"] == "cPhoto"
        photo = await crm.bind_photo(best, upload_of(PNG_1x1, "p.png", "image/png"))
        assert (await crm.get_contact_photo(best)) == photo


async def test_unconfigured_photo_field(sim: EspoSimulator, tmp_path: Path) -> None:
    async with backend_for(sim, tmp_path, contact_photo_field=None) as crm:
        assert not crm.capabilities.contact_photos and not crm.capabilities.bind_photo
        with pytest.raises(UnsupportedError, match="contact_photo_field"):
            await crm.get_contact_photo(record(sim, "Contact", firstName="John"))
    assert sim.requests == []


async def test_contact_photo_is_read_through_the_field(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    wilson = record(sim, "Contact", firstName="Alexander")
    photo = await crm.get_contact_photo(wilson)
    assert photo is not None and photo.mime_type == "image/png" and photo.size == len(PNG_1x1)
    async with crm.open_contact_photo(wilson) as download:
        assert b"".join([chunk async for chunk in download.chunks]) == PNG_1x1
    assert await crm.get_contact_photo(record(sim, "Contact", firstName="John")) is None


# --------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('url = "https://crm.example.com"', "no credentials"),
        ('url = "https://crm.example.com"\nsecret_key = "s"\nusername = "u"\npassword = "p"', "secret_key"),
        ('url = "https://crm.example.com"\napi_key = "k"\nusername = "u"\npassword = "p"', "not both"),
        ('url = "https://crm.example.com"\nusername = "u"', "both username and password"),
        ('url = "ftp://crm.example.com"\napi_key = "k"', "http(s)"),
        ('url = "https://crm.example.com"\napi_key = "k"\ncontact_photo_field = "c-Photo"', "field name"),
    ],
)
def test_settings_errors_are_clear(make_settings: Callable[..., Settings], table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        make_settings(f'[backends.espo]\nvendor = "espocrm"\n{table}\n')
    assert '"p"' not in str(caught.value) and '= "k"' not in str(caught.value)


def test_settings_normalise_the_url(make_settings: Callable[..., Settings]) -> None:
    loaded = make_settings(
        '[backends.espo]\nvendor = "espocrm"\nurl = "https://crm.example.com/api/v1/"\napi_key = "k"\n'
    )
    espo = loaded.backends["espo"]
    assert isinstance(espo, EspoCrmSettings)
    assert espo.url == "https://crm.example.com" and "k" not in repr(espo.api_key)


async def test_simulator_accepts_each_auth_mode(sim: EspoSimulator) -> None:
    sim.add_user(SimUser("other", type="api", auth_method="ApiKey", api_key="second"))
    signed = hmac_signature(API_KEY + "-h", SECRET, "GET", "/App/user")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=URL) as client:
        assert (await client.get("/api/v1/App/user", headers={"X-Hmac-Authorization": signed})).status_code == 200
        assert (await client.get("/api/v1/App/user?x=1", headers={"X-Hmac-Authorization": signed})).status_code == 200
        espo = base64.b64encode(f"jane:{PASSWORD}".encode()).decode()
        assert (await client.get("/api/v1/App/user", headers={"Espo-Authorization": espo})).status_code == 200
        raw_digest = hmac.new(SECRET.encode(), b"GET /App/user", hashlib.sha256).digest()  # pre-8.4.1 clients
        legacy = base64.b64encode(f"{API_KEY}-h:".encode() + raw_digest).decode()
        assert (await client.get("/api/v1/App/user", headers={"X-Hmac-Authorization": legacy})).status_code == 200
        wrong = await client.get("/api/v1/Case", headers={"X-Hmac-Authorization": signed})  # signed for another path
        assert (wrong.status_code, wrong.content, wrong.headers.get("X-Status-Reason")) == (401, b"", None)


async def test_upload_to_account_goes_to_its_stream(crm: EspoCrmBackend, sim: EspoSimulator) -> None:
    acme = record(sim, "Account", name="Acme Printing")
    entry = await crm.upload_attachment("account", acme, upload_of(b"invoice", "inv.txt", "text/plain"))
    assert [item.id for item in sim.stream_attachments("Account", acme)] == [entry.file_id]


async def test_no_secret_reaches_logs_or_messages(
    sim: EspoSimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    async with backend_for(sim, tmp_path, api_key=API_KEY + "-h", secret_key=SECRET) as crm:
        await crm.upload_attachment("case", printer(sim), upload_of(b"log me", "l.txt", "text/plain"))
        sim.faults.append(Fault("PUT", r"/Case/\w+", status=500))
        with pytest.raises(BackendError) as caught:
            await crm.upload_attachment("case", printer(sim), upload_of(b"fail", "f.txt", "text/plain"))
    async with backend_for(sim, tmp_path, api_key="wrong-key-value") as crm:
        with pytest.raises(AuthenticationError) as refused:
            await crm.check()
    text = caplog.text + str(caught.value) + str(refused.value)
    for secret in (SECRET, API_KEY, "wrong-key-value"):
        assert secret not in text
