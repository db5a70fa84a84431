"""Builds the MCP server: tools, resources and prompts on an `MCPServer`, backends opened by its lifespan.

`CrmServer` adjusts four things the SDK's defaults get wrong for a file server:
- `crm://` resources are read here, so each file is served with its own MIME type (the SDK gives all
  resources of a template one fixed type);
- a `CrmError` from a tool becomes a tool error with our message (the SDK would hide it as a crash);
- argument validation errors are rewritten into one line per field, without echoing large inputs;
- stdio runs on `crm_mcp._stdio`, the SDK's wire format without three whole copies of each large answer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError, UnexpectedToolError
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, CallToolResult, GetPromptResult, InputRequiredResult, Resource, ResourceTemplate
from pydantic import AnyUrl, ValidationError

from crm_mcp import __version__, resources
from crm_mcp._stdio import stdio_streams
from crm_mcp.app import CrmApp, open_app
from crm_mcp.completions import register_completions
from crm_mcp.config import Settings
from crm_mcp.errors import CrmError, NotFoundError
from crm_mcp.progress import ThrottledProgress
from crm_mcp.prompts import register_prompts
from crm_mcp.redaction import Redactor
from crm_mcp.tools import register_tools

__all__ = ["CrmServer", "build_server"]

logger = logging.getLogger(__name__)

INSTRUCTIONS = """\
crm-mcp reads and writes the files kept in CRMs (cases' attachments, contacts' photos).
Start with find_records to turn a name or case number into an id. list_case_files lists a case's
files with crm:// resource URIs; read one with read_file (small files), save_file (to disk) or
resources/read. upload_attachment and bind_photo take exactly one source: prefer `path` or `url`
over base64. list_backends shows the configured CRMs; every tool takes an optional `backend`."""


class CrmServer(MCPServer[CrmApp]):
    """`MCPServer` with crm-mcp's resource routing and error messages (see the module docstring)."""

    redactor: Redactor = Redactor(())
    """Cuts secrets out of every error message (`build_server` gives it the configured ones)."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[CrmApp, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        await self._refuse_unknown_arguments(name, arguments)
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, CrmError):
                raise ToolError(_bounded(self.redactor.redact(str(cause)))) from cause
            # A bug or an answer nobody foresaw. The SDK would say only "Error executing tool"; the
            # exception's own text may carry URLs or payloads, so name its type and point at the log.
            logger.error("tool %s failed unexpectedly", name, exc_info=cause)
            raise ToolError(
                f"{name} failed with an unexpected error ({type(cause).__name__}). Try once more; if it fails "
                "again, report it to the server's administrator (the details are in the server log on stderr)."
            ) from cause
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(_describe_validation(name, exc.__cause__)) from exc.__cause__
            raise

    async def _refuse_unknown_arguments(self, name: str, arguments: dict[str, Any]) -> None:
        """The SDK silently drops arguments a tool does not take, so a misspelt `limt` would quietly
        do the default thing; a model is better served by being told."""
        tool = next((tool for tool in await self.list_tools() if tool.name == name), None)
        if tool is None:
            return  # the SDK's own "Unknown tool" error follows
        known = set(tool.input_schema.get("properties", {}))
        unknown = sorted(set(arguments) - known)
        if unknown:
            raise ToolError(
                f"Invalid arguments for {name}: unknown argument(s) {', '.join(unknown)}; "
                f"this tool takes: {', '.join(sorted(known)) or 'no arguments'}"
            )

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Context[CrmApp, Any] | None = None
    ) -> GetPromptResult | InputRequiredResult:
        # The SDK reports both mistakes below as an opaque internal error; the caller deserves to know.
        prompts = {prompt.name: prompt for prompt in await self.list_prompts()}
        if name not in prompts:
            known = ", ".join(sorted(prompts))
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown prompt {name!r}; available prompts: {known}")
        missing = [
            argument.name
            for argument in prompts[name].arguments or []
            if argument.required and not (arguments or {}).get(argument.name)
        ]
        if missing:
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"Prompt {name!r} needs the argument(s): {', '.join(missing)}",
            )
        return await super().get_prompt(name, arguments, context)

    async def run_stdio_async(self) -> None:
        """What the SDK's method does, on crm-mcp's stdio streams (same wire, less memory per answer)."""
        async with stdio_streams() as (read_stream, write_stream):
            lowlevel = self._lowlevel_server
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())

    async def list_resources(self) -> list[Resource]:
        return [*resources.list_resources(), *await super().list_resources()]

    async def list_resource_templates(self) -> list[ResourceTemplate]:
        return [*resources.list_templates(), *await super().list_resource_templates()]

    async def read_resource(
        self, uri: AnyUrl | str, context: Context[CrmApp, Any] | None = None
    ) -> Iterable[ReadResourceContents] | InputRequiredResult:
        text = str(uri)
        if not text.startswith("crm://") or context is None:
            return await super().read_resource(uri, context)
        app: CrmApp = context.request_context.lifespan_context
        try:
            return [await resources.read_resource(app, text, ThrottledProgress(context, "read"))]
        except NotFoundError as exc:
            raise ResourceNotFoundError(_bounded(self.redactor.redact(str(exc)))) from exc
        except CrmError as exc:
            raise ResourceError(_bounded(self.redactor.redact(str(exc)))) from exc


MAX_ERROR_LENGTH = 1000
"""Longest tool error message. Messages quote the value they refuse; when that value is a whole
document sent as an id, the middle is cut, keeping the start (what was wrong) and the end (how to fix it)."""


def _bounded(message: str) -> str:
    if len(message) <= MAX_ERROR_LENGTH:
        return message
    keep = (MAX_ERROR_LENGTH - 40) // 2
    return f"{message[:keep]}…[{len(message) - 2 * keep:,} characters cut]…{message[-keep:]}"


def _describe_validation(tool: str, error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "arguments"
        message = item["msg"]
        if item["type"] == "missing":
            message = "required argument is missing"
        elif item["type"] == "extra_forbidden" or item["type"] == "unexpected_keyword_argument":
            message = "unknown argument"
        problems.append(f"{field}: {message}")
    return f"Invalid arguments for {tool}: " + "; ".join(problems) + ". See the tool's input schema."


def build_server(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> CrmServer:
    """The complete server for these settings; backends open when it starts and close when it stops.

    `transport` routes vendor backends' HTTP through e.g. an in-process simulator (tests only)."""

    @asynccontextmanager
    async def lifespan(_: MCPServer[CrmApp]) -> AsyncIterator[CrmApp]:
        async with open_app(settings, transport) as app:
            yield app

    server = CrmServer(
        name="crm-mcp",
        title="CRM files",
        description="Files attached to CRM records (Creatio, EspoCRM, SuperOffice, Wello, local store).",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
    )
    server.redactor = Redactor.for_models(settings.backends.values())
    register_tools(server, read_only=settings.read_only)
    register_prompts(server)
    register_completions(server)
    return server
