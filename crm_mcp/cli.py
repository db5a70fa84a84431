"""The `crm-mcp` command: `serve` (stdio or streamable HTTP) and `check`.

Logs go to stderr only: over stdio, stdout is the protocol channel.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from crm_mcp import __version__
from crm_mcp._memory import return_large_blocks_to_os
from crm_mcp.app import build_backends
from crm_mcp.config import Settings, load_settings
from crm_mcp.errors import ConfigError, CrmError
from crm_mcp.redaction import RedactingFilter, Redactor

__all__ = ["BearerTokenMiddleware", "BodyLimitMiddleware", "main"]

TOKEN_ENV = "CRM_MCP_TOKEN"
HEALTH_PATH = "/healthz"
"""GET → 200 once the backends are open; no token, so load balancers and orchestrators can probe it."""
EXIT_CONFIG = 2
WORKER_OPTIONS_ENV = "CRM_MCP_SERVE_OPTIONS"
"""`serve --workers N` hands its options to the worker processes in this variable (JSON, no secrets)."""

logger = logging.getLogger("crm_mcp")


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve" and args.workers != 1 and (args.transport != "http" or args.workers < 1):
        parser.error("--workers needs --transport http and a number of at least 1 (stdio has one client)")
    settings = _settings_and_logging(args.config, args.log_level)
    if args.command == "check":
        raise SystemExit(anyio.run(_check, settings))
    _serve(args, settings)


def _settings_and_logging(config: str | None, log_level: str) -> Settings:
    """Log to stderr through the redactor of the configured backends' secrets; the loaded settings."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _quiet_http_libraries()
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print(f"crm-mcp: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    redacting = RedactingFilter(Redactor.for_models(settings.backends.values()))
    for handler in logging.getLogger().handlers:
        handler.addFilter(redacting)
    return settings


def _quiet_http_libraries() -> None:
    """httpx logs every URL at INFO (a presigned URL source carries its signature in the query) and
    httpcore logs response headers at DEBUG (a CRM login answers with session cookies): neither may
    reach the log, whatever --log-level says. Their warnings still do."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crm-mcp", description="MCP server for the files kept in CRMs.")
    parser.add_argument("--version", action="version", version=f"crm-mcp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", help="configuration file (default: $CRM_MCP_CONFIG, then ./crm-mcp.toml)")
        sub.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])

    serve = commands.add_parser("serve", help="run the MCP server (stdio by default)")
    common(serve)
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP: address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="HTTP: port (default 8765)")
    serve.add_argument("--path", default="/mcp", help="HTTP: endpoint path (default /mcp)")
    serve.add_argument("--token", help=f"HTTP: bearer token clients must send (prefer ${TOKEN_ENV})")
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="HTTP: extra Host header value to accept (DNS-rebinding protection); repeatable",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="HTTP: server processes sharing the port (the transport is stateless; default 1)",
    )
    serve.add_argument(
        "--read-only",
        action="store_true",
        help="offer no tool that changes a CRM (upload_attachment and bind_photo are not listed)",
    )
    check = commands.add_parser("check", help="log in to every configured backend and report")
    common(check)
    return parser


async def _check(settings: Settings) -> int:
    """One line per backend; exit status 1 if any failed. Messages are our own errors' (no secrets)."""
    failures = 0
    redactor = Redactor.for_models(settings.backends.values())
    where = settings.source or "defaults (no configuration file)"
    print(f"configuration: {where}")
    for name, backend in build_backends(settings).items():
        try:
            async with backend:
                detail = await backend.check()
        except CrmError as exc:
            failures += 1
            print(f"{name} ({backend.vendor}): FAILED — {redactor.redact(str(exc))}")
        except Exception as exc:  # a bug or an unexpected network failure: say which, not its internals
            failures += 1
            logger.debug("check of %s failed", name, exc_info=True)
            print(f"{name} ({backend.vendor}): FAILED — unexpected {type(exc).__name__}")
        else:
            print(f"{name} ({backend.vendor}): ok — {detail}")
    return 1 if failures else 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace, settings: Settings) -> None:
    from crm_mcp.server import build_server

    if args.read_only:
        settings = settings.model_copy(update={"read_only": True})
    return_large_blocks_to_os()
    if args.transport == "stdio":
        build_server(settings).run()
        return

    import uvicorn

    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not _is_loopback(args.host) and not token:
        print(
            f"crm-mcp: refusing to listen on {args.host} without a bearer token: set ${TOKEN_ENV} "
            "(or --token), or listen on 127.0.0.1",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_CONFIG)
    logger.warning("crm-mcp %s starting on http://%s:%d%s", __version__, args.host, args.port, args.path)
    if args.workers == 1:
        app = _http_app(settings, args.host, args.path, args.allowed_host, token)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
        return
    # Worker processes are started afresh by uvicorn and build their app from the environment: the
    # options here, and the token under its usual variable (never on a command line).
    options = {key: getattr(args, key) for key in ("config", "log_level", "host", "path", "allowed_host", "read_only")}
    os.environ[WORKER_OPTIONS_ENV] = json.dumps(options)
    if token:
        os.environ[TOKEN_ENV] = token
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(
        "crm_mcp.cli:worker_app",
        factory=True,
        workers=args.workers,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
    )
    # What `uvicorn.run` does for workers, plus TCP_NODELAY on the shared socket (accepted connections
    # inherit it): on a socket bound for them, uvicorn's workers answer every request after the first
    # on a kept-alive connection ~40 ms late (Nagle against the client's delayed ACK).
    sock = config.bind_socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C stops the workers; no traceback
        Multiprocess(config, sockets=[sock]).run()


def worker_app() -> ASGIApp:
    """The app of one `serve --workers N` process, from the options `_serve` put in the environment.
    Each worker opens its own backends (their logins and connection pools); the local store is safe
    to share between processes."""
    return_large_blocks_to_os()  # a worker is a fresh process: the parent's setting is not inherited
    options = json.loads(os.environ[WORKER_OPTIONS_ENV])
    settings = _settings_and_logging(options["config"], options["log_level"])
    if options["read_only"]:
        settings = settings.model_copy(update={"read_only": True})
    token = os.environ.get(TOKEN_ENV) or None
    return _http_app(settings, options["host"], options["path"], options["allowed_host"], token)


def _http_app(settings: Settings, host: str, path: str, allowed: Sequence[str], token: str | None) -> ASGIApp:
    """The streamable-HTTP app: stateless, Host/Origin checked, body size capped, bearer token if set."""
    from mcp.server.transport_security import TransportSecuritySettings

    from crm_mcp.server import build_server

    server = build_server(settings)
    hosts = _allowed_hosts(host, allowed)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=[f"{scheme}://{name}" for name in hosts for scheme in ("http", "https")],
    )
    server.custom_route(HEALTH_PATH, methods=["GET"], include_in_schema=False)(_healthz)
    # Base64 in JSON makes a request ~4/3 of the bytes it carries; leave room for the envelope.
    body_limit = settings.limits.max_transfer_bytes * 4 // 3 + 1024 * 1024
    app: ASGIApp = server.streamable_http_app(
        streamable_http_path=path,
        stateless_http=True,
        max_request_body_size=body_limit,
        transport_security=security,
        host=host,
    )
    app = BodyLimitMiddleware(app, body_limit)
    if token:
        app = BearerTokenMiddleware(app, token, open_paths=(HEALTH_PATH,))
    return app


async def _healthz(_: Request) -> JSONResponse:
    # Uvicorn accepts connections only after the lifespan opened every backend, so answering at all
    # means ready. Nothing else is said: the endpoint needs no token.
    return JSONResponse({"status": "ok"})


def _allowed_hosts(host: str, extra: Sequence[str]) -> list[str]:
    """Host header values to accept: loopback names, the listen address (or, for a wildcard address,
    this machine's names) and any `--allowed-host`, each with any port."""
    names = {"127.0.0.1", "localhost", "[::1]", *extra}
    if host in ("0.0.0.0", "::"):
        names |= {socket.gethostname(), socket.getfqdn()}
    else:
        names.add(f"[{host}]" if ":" in host else host)
    return sorted({*names, *(f"{name}:*" for name in names)})


class BodyLimitMiddleware:
    """Answers a request whose Content-Length is over `limit` with a 413 that says the limit and what
    to do instead, before any of its body is read. (The SDK still stops a body without a length at
    the same limit, with its own shorter 413.)"""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self._app = app
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self._limit:
                body = json.dumps(
                    {
                        "error": "request_too_large",
                        "error_description": (
                            f"the request body is {int(length):,} bytes, over this server's limit of "
                            f"{self._limit:,} (limits.max_transfer_bytes as base64 plus 1 MiB); send large files "
                            "with upload_attachment's path or url source instead of content_base64"
                        ),
                    }
                )
                await send(
                    {
                        "type": "http.response.start",
                        "status": 413,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
                    }
                )
                await send({"type": "http.response.body", "body": body.encode()})
                return
        await self._app(scope, receive, send)


class BearerTokenMiddleware:
    """Rejects HTTP requests without `Authorization: Bearer <token>` (constant-time comparison),
    except GETs of `open_paths` (the health check)."""

    def __init__(self, app: ASGIApp, token: str, open_paths: Sequence[str] = ()) -> None:
        self._app = app
        self._expected = f"Bearer {token}".encode()
        self._open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD") and scope["path"] in self._open_paths:
            await self._app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self._expected):
            await self._app(scope, receive, send)
            return
        body = json.dumps({"error": "unauthorized", "error_description": "send Authorization: Bearer <token>"})
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b'Bearer realm="crm-mcp"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})
