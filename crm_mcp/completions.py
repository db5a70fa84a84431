"""Argument completion (`completion/complete`) for the prompts' arguments and the resource templates.

What a client can offer while a person fills in a prompt or a `crm://` URI:
- backend names (the `backend` argument of prompts and templates), from the configuration;
- cases and contacts by what has been typed so far, found in the chosen backend (`case`,
  `source_case`, `contact`), as values that `find_records` finds again: a case's number, a contact's name;
- record types at the start of a copy target ("case", "contact", "account": what the backend accepts),
  then the records of that type ("case CS-1001");
- the names of the files on the source case already chosen (`file_name`).

Completion is a convenience while typing: a CRM that fails or times out yields no suggestions rather
than an error. Asking about a prompt, template or argument this server does not have is an error
(-32602) that names what exists, as the spec asks.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INVALID_PARAMS,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    PromptReference,
    ResourceTemplateReference,
)

from crm_mcp.app import CrmApp
from crm_mcp.backends import Backend
from crm_mcp.backends.base import FindType
from crm_mcp.errors import CrmError
from crm_mcp.uris import FILE_TEMPLATE, PHOTO_TEMPLATE

__all__ = ["MAX_VALUES", "complete", "register_completions"]

logger = logging.getLogger(__name__)

MAX_VALUES = 100
"""The spec's cap on values in one completion."""
LOOKUP_LIMIT = 20
"""Records asked of a CRM per keystroke: enough to choose from, cheap enough to ask often."""
LOOKUP_TIMEOUT = 5.0
"""Seconds a CRM may take before completion gives up; a person is typing."""

_TEMPLATE_ARGUMENTS = {FILE_TEMPLATE: ("backend", "file_id"), PHOTO_TEMPLATE: ("backend", "contact_id")}

Completer = Callable[[CrmApp, str, dict[str, str]], Awaitable[list[str]]]


def register_completions(server: MCPServer[Any]) -> None:
    """Serve `completion/complete` (and so declare the `completions` capability).

    The SDK's `@server.completion()` decorator hands its function no request context, and completing
    a case or a contact needs the open backends, so the handler goes on the low-level server."""

    async def handler(ctx: ServerRequestContext[CrmApp, Any], params: CompleteRequestParams) -> CompleteResult:
        prompts = {prompt.name: tuple(a.name for a in prompt.arguments or []) for prompt in await server.list_prompts()}
        arguments = dict(params.context.arguments or {}) if params.context else {}
        values = await complete(
            ctx.lifespan_context, prompts, params.ref, params.argument.name, params.argument.value, arguments
        )
        return CompleteResult(completion=_completion(values))

    server._lowlevel_server.add_request_handler("completion/complete", CompleteRequestParams, handler)


async def complete(
    app: CrmApp,
    prompts: dict[str, tuple[str, ...]],
    ref: PromptReference | ResourceTemplateReference,
    argument: str,
    value: str,
    context: dict[str, str] | None = None,
) -> list[str]:
    """Suggestions for `argument` of the prompt or template `ref`, given what was typed (`value`) and
    the arguments already chosen (`context`). `prompts` maps each served prompt to its arguments."""
    known = prompts if isinstance(ref, PromptReference) else _TEMPLATE_ARGUMENTS
    key = ref.name if isinstance(ref, PromptReference) else ref.uri
    kind = "prompt" if isinstance(ref, PromptReference) else "resource template"
    if key not in known:
        raise MCPError(
            code=INVALID_PARAMS, message=f"Unknown {kind} {key!r}; this server has: {', '.join(sorted(known))}"
        )
    if argument not in known[key]:
        raise MCPError(
            code=INVALID_PARAMS,
            message=f"The {kind} {key!r} has no argument {argument!r}; its arguments: {', '.join(known[key])}",
        )
    completer = _COMPLETERS.get(argument)
    if completer is None:
        return []  # free text (a focus, a path, an id): nothing sensible to suggest
    try:
        with anyio.fail_after(LOOKUP_TIMEOUT):
            return await completer(app, value, context or {})
    except (CrmError, TimeoutError) as exc:
        logger.warning("no completions for %s of %s: %s", argument, key, exc or "the CRM took too long")
        return []


# ------------------------------------------------------------------------------------- completers


async def _backends(app: CrmApp, value: str, _: dict[str, str]) -> list[str]:
    return _matching(sorted(app.backends), value)


async def _cases(app: CrmApp, value: str, context: dict[str, str]) -> list[str]:
    backend = _backend(app, context)
    return [_case_number(title) for title in await _find(backend, "case", value)] if backend else []


async def _contacts(app: CrmApp, value: str, context: dict[str, str]) -> list[str]:
    backend = _backend(app, context)
    return await _find(backend, "contact", value) if backend else []


async def _target(app: CrmApp, value: str, context: dict[str, str]) -> list[str]:
    """A copy target reads '<record type> <which one>': first the record type, then the record."""
    backend = _backend(app, context)
    if backend is None:
        return []
    typed_type, space, rest = value.lstrip().partition(" ")
    if not space:
        return _matching(list(backend.capabilities.upload_record_types), typed_type)
    for record_type in backend.capabilities.find_record_types:
        if record_type == typed_type:
            titles = await _find(backend, record_type, rest)
            return [f"{record_type} {_case_number(t) if record_type == 'case' else t}" for t in titles]
    return []  # a type the backend cannot search (an account): nothing to suggest


async def _file_names(app: CrmApp, value: str, context: dict[str, str]) -> list[str]:
    """Names of the files on the source case, once exactly one case matches it."""
    backend = _backend(app, context)
    source = context.get("source_case", "").strip()
    if backend is None or not source or "case" not in backend.capabilities.find_record_types:
        return []
    cases = await backend.find_records("case", source, limit=2)
    if len(cases) != 1:
        return []
    page = await backend.list_case_files(cases[0].id, limit=200, cursor=None)
    names = sorted({entry.name for entry in page.files})
    return [name for name in names if value.casefold() in name.casefold()]


_COMPLETERS: dict[str, Completer] = {
    "backend": _backends,
    "case": _cases,
    "source_case": _cases,
    "contact": _contacts,
    "target": _target,
    "file_name": _file_names,
}


# -------------------------------------------------------------------------------------- internals


def _backend(app: CrmApp, context: dict[str, str]) -> Backend | None:
    """The backend chosen in the other arguments (None: one this server does not have), else the default."""
    chosen = context.get("backend", "").strip()
    return app.backends.get(chosen) if chosen else app.backends.get(app.settings.default_backend)


async def _find(backend: Backend, record_type: FindType, value: str) -> list[str]:
    text = value.strip()
    if not text or record_type not in backend.capabilities.find_record_types:
        return []
    return [record.title for record in await backend.find_records(record_type, text, limit=LOOKUP_LIMIT)]


def _case_number(title: str) -> str:
    """Every backend titles a case '<number> · <subject>'; the number is what find_records finds again."""
    number, separator, _ = title.partition(" · ")
    return number if separator and number else title


def _matching(choices: list[str], value: str) -> list[str]:
    typed = value.strip().casefold()
    return [choice for choice in choices if choice.casefold().startswith(typed)]


def _completion(values: list[str]) -> Completion:
    return Completion(values=values[:MAX_VALUES], has_more=len(values) > MAX_VALUES)
