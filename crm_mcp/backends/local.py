"""The built-in CRM: a store on disk that needs no account, so crm-mcp works out of the box.

It is a real store, not a toy, because people keep using it after the first try:

- Metadata lives in SQLite (`<store>/crm.sqlite3`) in WAL mode with a busy timeout, so several
  crm-mcp processes can share one store; every write is one `BEGIN IMMEDIATE` transaction.
- Bytes live in one file per attachment (`<store>/files/<file_id>`) or photo
  (`<store>/photos/<photo_id>`), named by a fresh GUID and never rewritten.
- Every write is atomic: the bytes are streamed into `<store>/tmp/`, counted, hashed, fsynced and
  renamed into place, and only then is the row inserted. Any failure removes the bytes again, so
  a failed upload leaves neither a row nor a file.
- All blocking work (sqlite, file I/O) runs in worker threads. SQLite connections are pooled and
  each is used by one thread at a time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import tempfile
import threading
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import anyio
import anyio.to_thread

from crm_mcp._tasks import write_behind
from crm_mcp.backends import _demo
from crm_mcp.backends.base import (
    BackendContext,
    BackendSettings,
    Capabilities,
    Download,
    FileEntry,
    FilePage,
    FindType,
    Photo,
    Record,
    RecordType,
    Upload,
    decode_cursor,
    encode_cursor,
    require_guid,
)
from crm_mcp.errors import BackendError, InvalidInputError, NotFoundError, TooLargeError, UnsupportedError

__all__ = ["SCHEMA_VERSION", "LocalBackend", "LocalSettings"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""`PRAGMA user_version` of the store this code writes; a newer store is refused, not damaged."""

CHUNK_SIZE = 1024 * 1024
"""Bytes per read of a stored file: each read is one worker-thread round trip, so 1 MiB pieces keep
those hops rare (20 for 20 MiB) while only one piece is in memory at a time. It must stay under the
stdio server's `_memory.MMAP_THRESHOLD`, or every piece is mapped, faulted in and unmapped again."""
BUSY_TIMEOUT_MS = 15_000
"""How long a write waits for another process's transaction before failing."""
STALE_TEMP_SECONDS = 24 * 3600
"""Temporary files older than this are leftovers of a crashed process and are swept on open."""

_T = TypeVar("_T")


class _Hasher(Protocol):
    """What the spool needs of a hashlib object (its own, or the one the tool's digest hands over)."""

    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


_SCHEMA = """
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE contacts (
    id TEXT PRIMARY KEY,
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    email TEXT,
    account_id TEXT REFERENCES accounts (id),
    photo_id TEXT REFERENCES photos (photo_id),
    created_at TEXT NOT NULL
);
CREATE TABLE cases (
    id TEXT PRIMARY KEY,
    number TEXT NOT NULL UNIQUE COLLATE NOCASE,
    subject TEXT NOT NULL,
    account_id TEXT REFERENCES accounts (id),
    contact_id TEXT REFERENCES contacts (id),
    created_at TEXT NOT NULL
);
CREATE TABLE files (
    file_id TEXT PRIMARY KEY,
    record_type TEXT NOT NULL CHECK (record_type IN ('case', 'contact', 'account')),
    record_id TEXT NOT NULL,
    name TEXT NOT NULL,
    mime_type TEXT NOT NULL,
    size INTEGER NOT NULL CHECK (size >= 0),
    sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX files_by_record ON files (record_type, record_id, created_at, name, file_id);
CREATE TABLE photos (
    photo_id TEXT PRIMARY KEY,
    contact_id TEXT NOT NULL REFERENCES contacts (id),
    name TEXT NOT NULL,
    mime_type TEXT NOT NULL,
    size INTEGER NOT NULL CHECK (size >= 0),
    sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX photos_by_contact ON photos (contact_id);
"""

_RECORD_TABLES: dict[str, str] = {"case": "cases", "contact": "contacts", "account": "accounts"}


class LocalSettings(BackendSettings):
    """`[backends.<name>]` with `vendor = "local"`."""

    vendor: Literal["local"]
    path: str | None = None
    """Store folder (`~` expanded; relative to the crm-mcp home); default: `<crm-mcp home>/<backend name>`."""
    demo_data: bool = True
    """Seed the demo data set into a store that has no records yet."""


# ------------------------------------------------------------------------------------ small helpers


def _stamp(moment: datetime) -> str:
    """Timestamps are stored as fixed-width UTC ISO text, so text order is time order."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _now() -> str:
    return _stamp(datetime.now(UTC))


def _fold(value: str | None) -> str | None:
    """Case-insensitive matching beyond ASCII (SQLite's LIKE and lower() only fold A-Z)."""
    return None if value is None else unicodedata.normalize("NFKC", value).casefold()


def _like_pattern(query: str) -> str:
    """A LIKE pattern matching `query` anywhere, with the user's `%`, `_` and `\\` taken literally."""
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _remove_quietly(path: Path) -> None:
    """Best-effort removal for cleanup paths, where a second error must not hide the first."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        logger.warning("could not remove %s", path, exc_info=True)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomically(tmp_dir: Path, final: Path, data: bytes) -> None:
    """Write `data` to `final` through a fsynced temporary file (used to seed the demo bytes)."""
    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="seed-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, final)
    except BaseException:
        _remove_quietly(Path(name))
        raise


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class _Blob:
    """Bytes already in their final place, described for their database row."""

    blob_id: str
    name: str
    mime_type: str
    size: int
    sha256: str


def _insert_file(conn: sqlite3.Connection, blob: _Blob, record_type: str, record_id: str, created_at: str) -> None:
    conn.execute(
        "INSERT INTO files (file_id, record_type, record_id, name, mime_type, size, sha256, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (blob.blob_id, record_type, record_id, blob.name, blob.mime_type, blob.size, blob.sha256, created_at),
    )


def _insert_photo(conn: sqlite3.Connection, blob: _Blob, contact_id: str, created_at: str) -> None:
    conn.execute(
        "INSERT INTO photos (photo_id, contact_id, name, mime_type, size, sha256, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (blob.blob_id, contact_id, blob.name, blob.mime_type, blob.size, blob.sha256, created_at),
    )


def _to_datetime(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _file_entry(row: sqlite3.Row) -> FileEntry:
    return FileEntry(
        file_id=row["file_id"],
        name=row["name"],
        mime_type=row["mime_type"],
        size=row["size"],
        created_at=_to_datetime(row["created_at"]),
        kind="file",
    )


def _photo(row: sqlite3.Row) -> Photo:
    return Photo(photo_id=row["photo_id"], mime_type=row["mime_type"], size=row["size"])


# ------------------------------------------------------------------------------------ connections


class _Connections:
    """A small pool of SQLite connections, each lent to one worker thread at a time.

    sqlite3 connections must not be used by two threads at once; lending them out one call at a
    time keeps that rule while avoiding a connect (and PRAGMAs) per call.
    """

    def __init__(self, database: Path) -> None:
        self._database = database
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer takes the lock up
        # front and waits (busy_timeout) instead of failing on a read-to-write upgrade.
        conn = sqlite3.connect(
            self._database, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.create_function("fold", 1, _fold, deterministic=True)
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def lend(self) -> Iterator[sqlite3.Connection]:
        """A connection for the calling thread; returned to the pool if it is left clean."""
        with self._lock:
            if self._closed:
                raise BackendError("the local store is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        healthy = False
        try:
            yield conn
            healthy = not conn.in_transaction
        finally:
            self._give_back(conn, healthy)

    def _give_back(self, conn: sqlite3.Connection, healthy: bool) -> None:
        with self._lock:
            if healthy and not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the store to WAL once. The switch needs the database to itself and SQLite does not
    wait for it (busy_timeout does not apply), so when another process is busy seeding a new store we
    retry until it is done — by then it has usually made the switch for us."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: the write lock is taken at BEGIN, so it never deadlocks on upgrade."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# ------------------------------------------------------------------------------------------ spools


class _Spool:
    """An upload on its way to disk: a temporary file plus the running size and SHA-256."""

    def __init__(self, tmp_dir: Path, hasher: _Hasher) -> None:
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-", suffix=".part")
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._hash = hasher
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Write and hash in the same worker-thread call (hashlib releases the GIL for large pieces,
        so the event loop meanwhile reads the next piece)."""
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def finish(self) -> None:
        """Flush to stable storage before the rename, so a crash never leaves a short file behind a row."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def move_to(self, final: Path) -> None:
        os.replace(self.path, final)
        _fsync_dir(final.parent)

    def discard(self) -> None:
        with suppress(OSError):
            self._file.close()
        _remove_quietly(self.path)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


@dataclass(frozen=True)
class _Located:
    """A stored blob found in the database: where its bytes are and how to describe them."""

    blob_id: str
    name: str
    mime_type: str
    size: int


# ----------------------------------------------------------------------------------------- backend


class LocalBackend:
    """The local store as a `Backend`: SQLite metadata, one file per blob, atomic writes."""

    vendor: ClassVar[str] = "local"
    settings_model: ClassVar[type[BackendSettings]] = LocalSettings

    def __init__(self, name: str, settings: LocalSettings, context: BackendContext) -> None:
        self.name = name
        self.settings = settings
        self.context = context
        # A relative path is taken inside the crm-mcp home, not the working directory: clients start
        # servers in whatever directory they like, and the store must not move with it.
        self.path = context.home / Path(settings.path).expanduser() if settings.path else context.home / name
        self._files_dir = self.path / "files"
        self._photos_dir = self.path / "photos"
        self._tmp_dir = self.path / "tmp"
        self._pool: _Connections | None = None

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            upload_record_types=["case", "contact", "account"],
            contact_photos=True,
            bind_photo=True,
            find_record_types=["case", "contact"],
            id_format="GUID (e.g. 3f2504e0-4f89-11d3-9a0c-0305e82c3301)",
        )

    # ------------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> LocalBackend:
        pool = _Connections(self.path / "crm.sqlite3")
        try:
            await anyio.to_thread.run_sync(self._open_store, pool)
        except BaseException:
            pool.close()
            raise
        self._pool = pool
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await anyio.to_thread.run_sync(pool.close)

    def _open_store(self, pool: _Connections) -> None:
        """Create the folders and schema, and seed the demo data, in one locked transaction."""
        try:
            for folder in (self.path, self._files_dir, self._photos_dir, self._tmp_dir):
                folder.mkdir(parents=True, exist_ok=True)
            self._sweep_stale_temp_files()
            with pool.lend() as conn:
                _use_wal(conn)
                with _transaction(conn):
                    self._migrate(conn)
                    if self.settings.demo_data and self._is_empty(conn):
                        self._seed(conn)
        except OSError as exc:
            raise BackendError(f"cannot open the local store at {self.path}: {exc.strerror or exc}") from exc
        except sqlite3.Error as exc:
            raise BackendError(f"cannot open the local store at {self.path}: {exc}") from exc

    def _sweep_stale_temp_files(self) -> None:
        """Remove temporary files a crashed process left behind; recent ones may belong to a live upload."""
        cutoff = time.time() - STALE_TEMP_SECONDS
        for leftover in self._tmp_dir.glob("*.part"):
            with suppress(OSError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise BackendError(
                f"the local store at {self.path} has schema version {version}, newer than this crm-mcp "
                f"understands ({SCHEMA_VERSION}); upgrade crm-mcp or point the backend at another folder"
            )
        if version == 0:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            logger.info("created local store schema v%d at %s", SCHEMA_VERSION, self.path)

    @staticmethod
    def _is_empty(conn: sqlite3.Connection) -> bool:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM cases) OR EXISTS (SELECT 1 FROM contacts) OR EXISTS (SELECT 1 FROM accounts)"
        ).fetchone()
        return not row[0]

    def _seed(self, conn: sqlite3.Connection) -> None:
        """Insert the demo set. Runs inside the opening transaction, which holds the write lock, so
        two processes starting together seed it once: the second sees the first one's records."""
        demo = _demo.build_demo()
        for account in demo.accounts:
            conn.execute(
                "INSERT INTO accounts (id, name, created_at) VALUES (?, ?, ?)",
                (account.id, account.name, _stamp(account.created_at)),
            )
        for contact in demo.contacts:
            conn.execute(
                "INSERT INTO contacts (id, first_name, last_name, email, account_id, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    contact.id,
                    contact.first_name,
                    contact.last_name,
                    contact.email,
                    contact.account_id,
                    _stamp(contact.created_at),
                ),
            )
        for case in demo.cases:
            conn.execute(
                "INSERT INTO cases (id, number, subject, account_id, contact_id, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (case.id, case.number, case.subject, case.account_id, case.contact_id, _stamp(case.created_at)),
            )
        written: list[Path] = []
        try:
            self._seed_blobs(conn, demo, written)
        except BaseException:
            for path in written:  # the transaction rolls back; the bytes must go with it
                _remove_quietly(path)
            raise
        logger.info("seeded the demo data into the local store at %s", self.path)

    def _seed_blobs(self, conn: sqlite3.Connection, demo: _demo.DemoSet, written: list[Path]) -> None:
        for file in demo.files:
            written.append(self._files_dir / file.file_id)
            _write_atomically(self._tmp_dir, written[-1], file.data)
            blob = _Blob(file.file_id, file.name, file.mime_type, len(file.data), _sha256(file.data))
            _insert_file(conn, blob, file.record_type, file.record_id, _stamp(file.created_at))
        for photo in demo.photos:
            written.append(self._photos_dir / photo.photo_id)
            _write_atomically(self._tmp_dir, written[-1], photo.data)
            blob = _Blob(photo.photo_id, photo.name, photo.mime_type, len(photo.data), _sha256(photo.data))
            _insert_photo(conn, blob, photo.contact_id, _stamp(photo.created_at))
            conn.execute("UPDATE contacts SET photo_id = ? WHERE id = ?", (photo.photo_id, photo.contact_id))
        _fsync_dir(self._files_dir)
        _fsync_dir(self._photos_dir)

    # ------------------------------------------------------------------------------ plumbing

    async def _db(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `work` with a pooled connection in a worker thread; sqlite failures become BackendError."""
        return await anyio.to_thread.run_sync(self._db_sync, work)

    def _db_sync(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        pool = self._pool
        if pool is None:
            raise BackendError(f"backend '{self.name}' is not open (use it inside 'async with')")
        try:
            with pool.lend() as conn:
                return work(conn)
        except sqlite3.Error as exc:
            logger.exception("local store %s failed", self.path)
            raise BackendError(f"the local store at {self.path} failed: {exc}") from exc

    def _missing(self, what: str, record_id: str) -> NotFoundError:
        hints = {
            "case": "use find_records with record_type='case' to look up the case id",
            "contact": "use find_records with record_type='contact' to look up the contact id",
            "account": "check the account id (find_records looks up cases and contacts)",
            "file": "use list_case_files to see a case's current files (find_records finds the case)",
        }
        return NotFoundError(f"{what} {record_id} was not found on backend '{self.name}'; {hints[what]}")

    def _require_record(self, conn: sqlite3.Connection, record_type: str, record_id: str) -> None:
        table = _RECORD_TABLES[record_type]
        if conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (record_id,)).fetchone() is None:
            raise self._missing(record_type, record_id)

    def _check_size(self, upload: Upload) -> None:
        limit = self.context.max_transfer_bytes
        if upload.size > limit:
            raise TooLargeError(
                f"{upload.name!r} is {upload.size:,} bytes, over this server's transfer limit of {limit:,} bytes "
                "(limits.max_transfer_bytes)"
            )

    # ---------------------------------------------------------------------------------- check

    async def check(self) -> str:
        def count(conn: sqlite3.Connection) -> sqlite3.Row:
            row: sqlite3.Row = conn.execute(
                "SELECT (SELECT count(*) FROM cases) AS cases, (SELECT count(*) FROM contacts) AS contacts, "
                "(SELECT count(*) FROM accounts) AS accounts, (SELECT count(*) FROM files) AS files, "
                "(SELECT count(*) FROM photos) AS photos"
            ).fetchone()
            return row

        row = await self._db(count)
        return (
            f"local store at {self.path}: {row['cases']} cases, {row['contacts']} contacts, "
            f"{row['accounts']} accounts, {row['files']} files, {row['photos']} photos"
        )

    # ---------------------------------------------------------------------------------- files

    async def list_case_files(self, case_id: str, *, limit: int, cursor: str | None) -> FilePage:
        case_id = require_guid(case_id, "case_id")
        if limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {limit}")
        after = None if cursor is None else decode_cursor(cursor, case_id, (str, str, str))

        def page(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            self._require_record(conn, "case", case_id)
            sql = (
                "SELECT file_id, name, mime_type, size, created_at FROM files "
                "WHERE record_type = 'case' AND record_id = ?"
            )
            params: list[Any] = [case_id]
            if after is not None:
                sql += " AND (created_at, name, file_id) > (?, ?, ?)"
                params += after
            sql += " ORDER BY created_at, name, file_id LIMIT ?"
            return conn.execute(sql, [*params, limit + 1]).fetchall()

        rows = await self._db(page)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more:  # a keyset cursor (the last row's sort key), so files added meanwhile never shift a page
            last = rows[-1]
            next_cursor = encode_cursor(case_id, last["created_at"], last["name"], last["file_id"])
        return FilePage(files=[_file_entry(row) for row in rows], next_cursor=next_cursor)

    @asynccontextmanager
    async def open_file(self, file_id: str) -> AsyncIterator[Download]:
        file_id = require_guid(file_id, "file_id")

        def locate(conn: sqlite3.Connection) -> _Located | None:
            row = conn.execute(
                "SELECT file_id, name, mime_type, size FROM files WHERE file_id = ?", (file_id,)
            ).fetchone()
            return None if row is None else _Located(row["file_id"], row["name"], row["mime_type"], row["size"])

        found = await self._db(locate)
        if found is None:
            raise self._missing("file", file_id)
        handle = await self._open_blob(self._files_dir / found.blob_id, found)
        if handle is None:
            raise BackendError(
                f"the bytes of {found.name!r} ({found.blob_id}) are missing from the local store at {self.path}"
            )
        async with handle:
            yield _download(found, handle)

    async def _open_blob(self, path: Path, found: _Located) -> anyio.AsyncFile[bytes] | None:
        """Open a blob's bytes for reading; None if they are gone (the caller decides what that means)."""
        try:
            return await anyio.open_file(path, "rb")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendError(f"cannot read {found.name!r} from the local store: {exc.strerror or exc}") from exc

    # --------------------------------------------------------------------------------- photos

    def _locate_photo(self, conn: sqlite3.Connection, contact_id: str) -> _Located | None:
        row = conn.execute(
            "SELECT c.id, p.photo_id, p.name, p.mime_type, p.size FROM contacts AS c "
            "LEFT JOIN photos AS p ON p.photo_id = c.photo_id WHERE c.id = ?",
            (contact_id,),
        ).fetchone()
        if row is None:
            raise self._missing("contact", contact_id)
        if row["photo_id"] is None:
            return None
        return _Located(row["photo_id"], row["name"], row["mime_type"], row["size"])

    async def get_contact_photo(self, contact_id: str) -> Photo | None:
        contact_id = require_guid(contact_id, "contact_id")
        found = await self._db(lambda conn: self._locate_photo(conn, contact_id))
        if found is None:
            return None
        return Photo(photo_id=found.blob_id, mime_type=found.mime_type, size=found.size)

    @asynccontextmanager
    async def open_contact_photo(self, contact_id: str) -> AsyncIterator[Download]:
        contact_id = require_guid(contact_id, "contact_id")
        # A concurrent bind_photo may remove the old bytes between the lookup and the open; look
        # again then (an opened file stays readable on POSIX even after it is removed).
        for _attempt in range(3):
            found = await self._db(lambda conn: self._locate_photo(conn, contact_id))
            if found is None:
                raise NotFoundError(
                    f"contact {contact_id} has no photo on backend '{self.name}' (get_contact_photo shows "
                    "whether a contact has one; bind_photo sets it)"
                )
            handle = await self._open_blob(self._photos_dir / found.blob_id, found)
            if handle is None:
                continue
            async with handle:
                yield _download(found, handle)
            return
        raise BackendError(f"the photo of contact {contact_id} is missing from the local store at {self.path}")

    # -------------------------------------------------------------------------------- uploads

    async def upload_attachment(self, record_type: RecordType, record_id: str, upload: Upload) -> FileEntry:
        if record_type not in _RECORD_TABLES:
            raise UnsupportedError(
                f"the local backend attaches files to cases, contacts and accounts, not {record_type!r}"
            )
        record_id = require_guid(record_id, "record_id")
        self._check_size(upload)
        await self._db(lambda conn: self._require_record(conn, record_type, record_id))
        file_id = str(uuid.uuid4())
        final = self._files_dir / file_id

        def insert(conn: sqlite3.Connection, spool: _Spool) -> FileEntry:
            with _transaction(conn):
                self._require_record(conn, record_type, record_id)
                created_at = _now()
                blob = _Blob(file_id, upload.name, upload.mime_type, spool.size, spool.sha256)
                _insert_file(conn, blob, record_type, record_id, created_at)
            return FileEntry(
                file_id=file_id,
                name=upload.name,
                mime_type=upload.mime_type,
                size=spool.size,
                created_at=_to_datetime(created_at),
            )

        entry = await self._store(upload, final, insert)
        logger.info(
            "stored %s (%d bytes) on %s %s as file %s", upload.name, entry.size, record_type, record_id, file_id
        )
        return entry

    async def bind_photo(self, contact_id: str, upload: Upload) -> Photo:
        contact_id = require_guid(contact_id, "contact_id")
        if not upload.mime_type.lower().startswith("image/"):
            raise InvalidInputError(
                f"only images can be contact photos, but {upload.name!r} is {upload.mime_type}; "
                "give a PNG, JPEG, GIF or WebP image"
            )
        self._check_size(upload)
        await self._db(lambda conn: self._require_record(conn, "contact", contact_id))
        photo_id = str(uuid.uuid4())

        def swap(conn: sqlite3.Connection, spool: _Spool) -> tuple[Photo, str | None]:
            """Make the new photo current; return it and the id whose bytes are no longer needed."""
            with _transaction(conn):
                self._require_record(conn, "contact", contact_id)
                old = conn.execute(
                    "SELECT p.photo_id, p.mime_type, p.size, p.sha256 FROM contacts AS c "
                    "JOIN photos AS p ON p.photo_id = c.photo_id WHERE c.id = ?",
                    (contact_id,),
                ).fetchone()
                if old is not None and old["sha256"] == spool.sha256 and old["mime_type"] == upload.mime_type:
                    return _photo(old), photo_id  # the same image again: keep the current one
                blob = _Blob(photo_id, upload.name, upload.mime_type, spool.size, spool.sha256)
                _insert_photo(conn, blob, contact_id, _now())
                conn.execute("UPDATE contacts SET photo_id = ? WHERE id = ?", (photo_id, contact_id))
                if old is not None:
                    conn.execute("DELETE FROM photos WHERE photo_id = ?", (old["photo_id"],))
            new = Photo(photo_id=photo_id, mime_type=upload.mime_type, size=spool.size)
            return new, None if old is None else old["photo_id"]

        photo, obsolete = await self._store(upload, self._photos_dir / photo_id, swap)
        if obsolete is not None:
            # After the commit: no row points at these bytes any more.
            await anyio.to_thread.run_sync(_remove_quietly, self._photos_dir / obsolete)
        logger.info("contact %s now has photo %s", contact_id, photo.photo_id)
        return photo

    async def _store(self, upload: Upload, final: Path, commit: Callable[[sqlite3.Connection, _Spool], _T]) -> _T:
        """Spool the upload, move it to `final`, then run `commit` (the row). All or nothing."""
        spool = await self._spool(upload)
        # Shielded: once the bytes are complete, cancellation must not strike between the rename
        # and the row, or we could not tell whether the row exists and whom the file belongs to.
        with anyio.CancelScope(shield=True):
            try:
                await self._disk(f"store {upload.name!r}", spool.move_to, final)
                return await self._db(lambda conn: commit(conn, spool))
            except BaseException:
                await anyio.to_thread.run_sync(spool.discard)
                await anyio.to_thread.run_sync(_remove_quietly, final)
                raise

    async def _spool(self, upload: Upload) -> _Spool:
        """Stream the upload into a temporary file, counting and hashing; refuse too many or too few bytes.

        Errors of the source (its own exceptions) pass through unchanged; errors of our disk become
        `BackendError`. Either way the temporary file is removed."""
        what = f"store {upload.name!r}"
        spool = await self._disk(what, _Spool, self._tmp_dir, _take_hashing(upload.chunks))

        async def checked() -> AsyncIterator[bytes]:
            received = 0
            async for chunk in upload.chunks:
                received += len(chunk)
                self._check_growth(upload, received)
                yield chunk

        async def write(chunk: bytes) -> None:  # and hash, in one worker-thread call
            await self._disk(what, spool.write, chunk)

        try:
            await write_behind(checked(), write)  # the source reads piece N+1 while piece N is written
            if spool.size != upload.size:
                raise BackendError(
                    f"the source of {upload.name!r} ended after {spool.size:,} of {upload.size:,} bytes "
                    "(truncated); nothing was stored"
                )
            await self._disk(what, spool.finish)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(spool.discard)
                await _close_stream(upload.chunks)
            raise
        return spool

    def _check_growth(self, upload: Upload, received: int) -> None:
        """Stop a stream as soon as it passes the transfer limit or the size it announced."""
        limit = self.context.max_transfer_bytes
        if received > limit:
            raise TooLargeError(
                f"{upload.name!r} grew past this server's transfer limit of {limit:,} bytes "
                "(limits.max_transfer_bytes); nothing was stored"
            )
        if received > upload.size:
            raise BackendError(
                f"the source of {upload.name!r} sent more than the {upload.size:,} bytes it announced; "
                "nothing was stored"
            )

    async def _disk(self, what: str, work: Callable[..., _T], *args: Any) -> _T:
        """Blocking file work in a worker thread; an OSError of the store becomes a clear BackendError."""
        try:
            return await anyio.to_thread.run_sync(work, *args)
        except OSError as exc:
            logger.exception("local store %s: could not %s", self.path, what)
            raise BackendError(
                f"the local store at {self.path} could not {what}: {exc.strerror or exc}; nothing was stored"
            ) from exc

    # ----------------------------------------------------------------------------------- find

    async def find_records(self, record_type: FindType, query: str, *, limit: int) -> list[Record]:
        text = " ".join(query.split())
        if not text:
            raise InvalidInputError("query is empty: give a name, a case number (e.g. 'CS-1001') or words of a subject")
        if limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {limit}")
        folded = _fold(text) or ""
        if record_type == "case":
            return await self._db(lambda conn: _find_cases(conn, folded, limit))
        if record_type == "contact":
            return await self._db(lambda conn: _find_contacts(conn, folded, limit))
        raise UnsupportedError(f"the local backend finds cases and contacts, not {record_type!r}")


# ---------------------------------------------------------------------------------- free functions


def _download(found: _Located, handle: anyio.AsyncFile[bytes]) -> Download:
    return Download(name=found.name, mime_type=found.mime_type, size=found.size, chunks=_read_chunks(handle))


async def _read_chunks(handle: anyio.AsyncFile[bytes]) -> AsyncIterator[bytes]:
    """`CHUNK_SIZE` at a time, so a large file never sits in memory whole."""
    while chunk := await handle.read(CHUNK_SIZE):
        yield chunk


def _take_hashing(chunks: AsyncIterator[bytes]) -> _Hasher:
    """The hash of the caller's digest when the upload offers it (`sources.DigestedChunks`): the store
    hashes every byte it writes anyway, so the tool's digest need not hash them a second time."""
    take = getattr(chunks, "take_hashing", None)
    hasher: _Hasher = take() if callable(take) else hashlib.sha256()
    return hasher


async def _close_stream(chunks: AsyncIterator[bytes]) -> None:
    """Close an upload's generator early, so its source (an HTTP response, a file) is released now."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        with suppress(Exception):
            await aclose()


def _find_cases(conn: sqlite3.Connection, folded: str, limit: int) -> list[Record]:
    """Exact case number first, then subjects containing the text (both case-insensitive)."""
    rows = conn.execute(
        "SELECT id, number, subject, fold(number) = ? AS exact FROM cases "
        "WHERE fold(number) = ? OR fold(subject) LIKE ? ESCAPE '\\' "
        "ORDER BY exact DESC, number, id LIMIT ?",
        (folded, folded, _like_pattern(folded), limit),
    ).fetchall()
    return [Record(id=row["id"], title=f"{row['number']} · {row['subject']}", record_type="case") for row in rows]


def _find_contacts(conn: sqlite3.Connection, folded: str, limit: int) -> list[Record]:
    """Full name (either order), first or last name containing the text, case-insensitive."""
    pattern = _like_pattern(folded)
    rows = conn.execute(
        "SELECT id, first_name, last_name FROM contacts "
        "WHERE fold(first_name || ' ' || last_name) LIKE ?1 ESCAPE '\\' "
        "OR fold(last_name || ' ' || first_name) LIKE ?1 ESCAPE '\\' "
        "OR fold(last_name || ', ' || first_name) LIKE ?1 ESCAPE '\\' "
        "ORDER BY last_name, first_name, id LIMIT ?2",
        (pattern, limit),
    ).fetchall()
    return [
        Record(id=row["id"], title=f"{row['first_name']} {row['last_name']}".strip(), record_type="contact")
        for row in rows
    ]
