"""crm-mcp's stdio transport: the SDK's wire format, without whole-frame copies of large answers.

The SDK's stdio transport turns each outgoing message into a JSON `str`, appends a newline (a second
copy) and encodes it to UTF-8 (a third). For a 20 MiB `resources/read` the frame is 27 MiB of base64,
so those copies alone put ~80 MiB on the server's peak, and the last frame stays referenced until the
next one is written. Here a message is written as bytes: small ones in one `to_json` call, and any
string over `SLICE_CHARS` (a file's base64) in slices, so a large answer costs one slice beyond the
string the SDK already holds.

The wire is the SDK's exactly: one JSON document per line, UTF-8, serialised by the message model's own
pydantic serializer (by alias, unset fields left out), newlines only as frame ends; stdin lines are
decoded as UTF-8 with replacement and validated as JSON-RPC by the SDK's adapter, one error per bad
line; EOF on stdin ends the read stream. As in the SDK, fd 0 and fd 1 are taken over while serving:
the protocol uses private duplicates, fd 0 reads the null device and fd 1 goes to stderr, so a
library or child process that prints cannot corrupt a frame; both are restored on exit.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, BinaryIO

import anyio
import anyio.lowlevel
import mcp_types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage
from pydantic import BaseModel
from pydantic_core import to_json

__all__ = ["SLICE_CHARS", "frame_pieces", "stdio_streams"]

SLICE_CHARS = 1 << 20
"""Strings longer than this are serialised and written a slice at a time (1 Mi characters)."""

# ------------------------------------------------------------------------------------------ writing


def frame_pieces(message: mcp_types.JSONRPCMessage) -> Iterator[bytes]:
    """The message's frame (its JSON and a newline) as pieces of bytes, large strings a slice at a time.

    Concatenated, the pieces are `message.model_dump_json(by_alias=True, exclude_unset=True)` encoded
    as UTF-8, plus b"\\n": what the SDK's stdio transport writes."""
    if _has_large_string(message):
        yield from _pieces(message.model_dump(mode="json", by_alias=True, exclude_unset=True))
    else:
        yield message.__pydantic_serializer__.to_json(message, by_alias=True, exclude_unset=True)
    yield b"\n"


def _has_large_string(value: Any) -> bool:
    """Whether a string over `SLICE_CHARS` is anywhere in `value` (models are looked into without
    dumping them: a small message's frame then costs one `to_json`)."""
    if isinstance(value, str):
        return len(value) > SLICE_CHARS
    if isinstance(value, dict):
        return any(_has_large_string(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_has_large_string(item) for item in value)
    if isinstance(value, BaseModel):
        return any(_has_large_string(item) for item in vars(value).values())
    return False


def _pieces(value: Any) -> Iterator[bytes]:
    """Compact JSON of a JSON-mode dump, as pydantic writes it, recursing only where a large string is.
    Escaping is per character, so a string's slices escape to the slices of its escaped whole."""
    if isinstance(value, str) and len(value) > SLICE_CHARS:
        yield b'"'
        for start in range(0, len(value), SLICE_CHARS):
            yield to_json(value[start : start + SLICE_CHARS])[1:-1]
        yield b'"'
    elif isinstance(value, dict) and _has_large_string(value):
        yield b"{"
        for index, (key, item) in enumerate(value.items()):
            yield (b"," if index else b"") + to_json(key) + b":"
            yield from _pieces(item)
        yield b"}"
    elif isinstance(value, list) and _has_large_string(value):
        yield b"["
        for index, item in enumerate(value):
            if index:
                yield b","
            yield from _pieces(item)
        yield b"]"
    else:
        yield to_json(value)


def _write_frame(out: BinaryIO, message: mcp_types.JSONRPCMessage) -> None:
    for piece in frame_pieces(message):
        out.write(piece)
    out.flush()


# ------------------------------------------------------------------------------ the process's fds


@contextlib.contextmanager
def _claimed(fd: int, stream: Any, mode: str, divert: Callable[[], int]) -> Iterator[BinaryIO]:
    """A binary file on a private duplicate of `fd`, with `fd` itself pointed at `divert()` meanwhile.

    When `stream` (sys.stdin or sys.stdout) is not backed by `fd` (an embedding host replaced it) or
    descriptors cannot be duplicated, the stream's own buffer is served as it is."""
    if not _backed_by(stream, fd):
        yield stream.buffer
        return
    try:
        private = _dup_above_std(fd)
    except OSError:
        yield stream.buffer
        return
    try:
        diversion = divert()
        try:
            os.dup2(diversion, fd)
        finally:
            os.close(diversion)
    except OSError:
        os.close(private)
        yield stream.buffer
        return
    try:
        yield os.fdopen(private, mode, closefd=False)
    finally:
        # The duplicate stays open: a worker thread may still be blocked reading it (a cancelled
        # server), and a closed number could be reused under it for another file.
        os.dup2(private, fd)


def _backed_by(stream: Any, fd: int) -> bool:
    try:
        return bool(stream.buffer.fileno() == fd)
    except (AttributeError, OSError, ValueError):
        return False


def _dup_above_std(fd: int) -> int:
    duplicate = os.dup(fd)
    if duplicate > 2:
        return duplicate
    try:  # 0-2 were closed: a duplicate there would be diverted along with the standard descriptor
        return _dup_above_std(fd)
    finally:
        os.close(duplicate)


def _null_for_reading() -> int:
    return os.open(os.devnull, os.O_RDONLY)


def _stderr_for_writing() -> int:
    try:
        return os.dup(2)
    except OSError:
        return os.open(os.devnull, os.O_WRONLY)


# ------------------------------------------------------------------------------------------ streams


@contextlib.asynccontextmanager
async def stdio_streams() -> AsyncIterator[
    tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]
]:
    """The server's read and write streams over this process's stdin and stdout (see the module doc)."""
    with (
        _claimed(0, sys.stdin, "rb", _null_for_reading) as stdin,
        _claimed(1, sys.stdout, "wb", _stderr_for_writing) as stdout,
    ):
        incoming_writer, incoming = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        outgoing, outgoing_reader = anyio.create_memory_object_stream[SessionMessage](0)
        lines = anyio.wrap_file(_Lines(stdin, encoding="utf-8", errors="replace"))

        async def read_stdin() -> None:
            try:
                async with incoming_writer:
                    async for line in lines:
                        await incoming_writer.send(_parse(line))
            except anyio.ClosedResourceError:  # the server stopped reading
                await anyio.lowlevel.checkpoint()

        async def write_stdout() -> None:
            try:
                async with outgoing_reader:
                    async for session_message in outgoing_reader:
                        message = session_message.message
                        del session_message  # nothing here keeps the last answer alive after it is written
                        await anyio.to_thread.run_sync(_write_frame, stdout, message)
                        del message
            except anyio.ClosedResourceError:
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read_stdin)
            tasks.start_soon(write_stdout)
            yield incoming, outgoing


class _Lines(io.TextIOWrapper):
    """UTF-8 lines of the private stdin; closing it leaves the descriptor alone (it is restored)."""

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.detach()


def _parse(line: str) -> SessionMessage | Exception:
    try:
        return SessionMessage(mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except Exception as exc:  # the server answers a malformed line; the stream goes on
        return exc
