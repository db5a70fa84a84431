"""crm-mcp's stdio transport: the SDK's frames byte for byte, large strings in slices, the fds taken
over while serving, and glibc told to return large blocks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import mcp_types
import pytest

from crm_mcp._stdio import SLICE_CHARS, frame_pieces

BIG = SLICE_CHARS * 2 + 12_345


def _messages() -> list[mcp_types.JSONRPCMessage]:
    tricky = 'quote " backslash \\ newline \n tab \t nul \x00 del \x7f é ✓ 𝄞 </script>'
    return [
        mcp_types.JSONRPCRequest(jsonrpc="2.0", id=1, method="tools/list", params={"_meta": {"k": [1, 2.5, None]}}),
        mcp_types.JSONRPCNotification(
            jsonrpc="2.0",
            method="notifications/progress",
            params={"progressToken": "t", "progress": 3.0, "total": 10, "message": tricky},
        ),
        mcp_types.JSONRPCResponse(jsonrpc="2.0", id="a", result={"content": [{"type": "text", "text": tricky}]}),
        mcp_types.JSONRPCError(jsonrpc="2.0", id=7, error=mcp_types.ErrorData(code=-32602, message=tricky)),
        mcp_types.JSONRPCResponse(
            jsonrpc="2.0",
            id=2,
            result={
                "contents": [
                    {"uri": "crm://local/files/x", "mimeType": "application/pdf", "blob": "QUJD" * (BIG // 4)},
                    {"uri": "crm://local/files/y", "text": (tricky * (BIG // len(tricky) + 1))[:BIG]},
                ],
                "resultType": "complete",
                "_meta": {"empty": {}, "list": [], "flag": True, "n": -1},
            },
        ),
        mcp_types.JSONRPCResponse(jsonrpc="2.0", id=3, result={"texts": ["small", "x" * BIG, {"deep": ["y" * BIG]}]}),
    ]


@pytest.mark.parametrize("message", _messages(), ids=lambda message: type(message).__name__)
def test_a_frame_is_the_sdk_json_and_a_newline(message: mcp_types.JSONRPCMessage) -> None:
    expected = message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
    assert b"".join(frame_pieces(message)) == expected


def test_a_large_string_is_written_a_slice_at_a_time() -> None:
    message = _messages()[4]
    pieces = list(frame_pieces(message))
    # é and ✓ take 2 and 3 bytes, a NUL 6 as \u0000: no piece is more than one slice's escaped size.
    assert max(len(piece) for piece in pieces) <= SLICE_CHARS * 6
    assert len(pieces) > 2 * (BIG // SLICE_CHARS)


def test_a_frame_has_no_newline_but_its_end() -> None:
    for message in _messages():
        frame = b"".join(frame_pieces(message))
        assert frame.count(b"\n") == 1
        assert frame.endswith(b"\n")


# ------------------------------------------------------------------------------------- real process

ECHO = textwrap.dedent(
    """
    import os, sys, anyio
    from crm_mcp._stdio import stdio_streams

    async def main() -> None:
        async with stdio_streams() as (incoming, outgoing):
            os.write(1, b"stray fd write\\n")
            print("stray print", flush=True)
            async with outgoing:
                async for item in incoming:
                    if isinstance(item, Exception):
                        print("bad line:", type(item).__name__, file=sys.stderr, flush=True)
                    else:
                        await outgoing.send(item)
        os.write(1, b"fd 1 restored\\n")

    anyio.run(main)
    """
)


def _echo(stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", ECHO],
        check=False,
        input=stdin,
        capture_output=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )


def test_frames_go_out_one_per_line_and_eof_ends_the_server() -> None:
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "x", "arguments": {"b": "é" * BIG}}},
    ]
    done = _echo(b"".join(json.dumps(request).encode() + b"\n" for request in requests))
    assert done.returncode == 0, done.stderr.decode()
    *frames, after = done.stdout.split(b"\n")[:-1]
    assert [json.loads(frame) for frame in frames] == requests
    assert after == b"fd 1 restored"


def test_stray_output_while_serving_goes_to_stderr_not_the_wire() -> None:
    done = _echo(b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}\n')
    assert done.stdout == b'{"jsonrpc":"2.0","id":1,"method":"ping"}\nfd 1 restored\n'
    assert b"stray fd write" in done.stderr
    assert b"stray print" in done.stderr


def test_a_malformed_line_is_reported_and_the_stream_goes_on() -> None:
    done = _echo(b'not json\n\xff\xfe{"jsonrpc": "2.0"}\n{"jsonrpc": "2.0", "id": 5, "method": "ping"}\n')
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr.count(b"bad line: ValidationError") == 2
    assert done.stdout.split(b"\n")[0] == b'{"jsonrpc":"2.0","id":5,"method":"ping"}'
