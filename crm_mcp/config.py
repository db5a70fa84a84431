"""The configuration: a TOML file, `${VAR}` interpolation from the environment, strict validation.

Discovery order: `--config PATH`, else `$CRM_MCP_CONFIG`, else `./crm-mcp.toml`, else no file — then
the server runs on one `local` backend under `$CRM_MCP_HOME` (default: the platform's user data
directory). A file without any `[backends.*]` table gets that same `local` backend.

Every error is a `ConfigError` whose message names the file, the backend and the key, because the
person reading it is fixing a file they cannot see in the error otherwise.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from crm_mcp.backends import vendor_class
from crm_mcp.backends.base import BackendSettings
from crm_mcp.errors import ConfigError

__all__ = ["CONFIG_ENV", "DEFAULT_CONFIG_NAME", "HOME_ENV", "Files", "Limits", "Settings", "load_settings"]

CONFIG_ENV = "CRM_MCP_CONFIG"
HOME_ENV = "CRM_MCP_HOME"
DEFAULT_CONFIG_NAME = "crm-mcp.toml"

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BACKEND_NAME = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")
_TOP_LEVEL_KEYS = {"default_backend", "limits", "files", "backends"}
_M = TypeVar("_M", bound=BaseModel)


class Limits(BaseModel):
    """`[limits]`: how much may travel inline and how much may travel at all."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inline_bytes: int = Field(default=262_144, ge=0, le=8 * 1024 * 1024)
    """Largest binary payload (raw bytes) placed inline in a tool result: photos, read_file blobs."""
    inline_text_bytes: int = Field(default=262_144, ge=0, le=8 * 1024 * 1024)
    """Largest text file read_file returns as text. The text travels twice (text block and
    structuredContent), and Claude Desktop rejects results over ~1 MB: hence 256 KiB."""
    max_transfer_bytes: int = Field(default=104_857_600, ge=1)
    """Largest upload or download."""


class Files(BaseModel):
    """`[files]`: which local folders and URLs sources and save_file may touch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    roots: tuple[Path, ...] = ()
    """Resolved folders; empty in the file means the working directory."""
    allow_private_urls: bool = False


class Settings(BaseModel):
    """Everything the server needs, validated. Built by `load_settings`."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    source: Path | None = None
    """The file this came from (None: defaults)."""
    home: Path
    default_backend: str
    limits: Limits = Limits()
    files: Files
    backends: dict[str, BackendSettings]
    read_only: bool = False
    """`crm-mcp serve --read-only`: no tool may change any CRM (the write tools are not even listed)."""


def default_home(env: Mapping[str, str]) -> Path:
    """`$CRM_MCP_HOME`, else the platform's user data directory for crm-mcp."""
    if value := env.get(HOME_ENV):
        return Path(value).expanduser()
    return Path(platformdirs.user_data_dir("crm-mcp", appauthor=False))


def find_config(explicit: str | None, env: Mapping[str, str], cwd: Path) -> Path | None:
    """The configuration file to read, by the discovery order; an explicit path must exist."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found (given with --config)")
        return path
    if value := env.get(CONFIG_ENV):
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found (given by ${CONFIG_ENV})")
        return path
    candidate = cwd / DEFAULT_CONFIG_NAME
    return candidate if candidate.is_file() else None


def load_settings(
    explicit: str | None = None, *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Settings:
    """Find, read, interpolate and validate the configuration."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    path = find_config(explicit, env, cwd)
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the configuration file: {exc}") from None
    return _build(raw, path, env, cwd)


def _build(raw: dict[str, Any], path: Path | None, env: Mapping[str, str], cwd: Path) -> Settings:
    where = str(path) if path else "configuration"
    unknown = sorted(set(raw) - _TOP_LEVEL_KEYS)
    if unknown:
        allowed = ", ".join(sorted(_TOP_LEVEL_KEYS))
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} at the top level (allowed: {allowed})")
    raw = _interpolate(raw, env, where, ())

    limits = _validate(Limits, _table(raw, "limits", where), where, "[limits]")
    files_raw = dict(_table(raw, "files", where))
    files_raw["roots"] = _roots(files_raw.get("roots"), path, cwd, where)
    files = _validate(Files, files_raw, where, "[files]")

    backends_raw = _table(raw, "backends", where)
    backends = {name: _backend(name, table, where) for name, table in backends_raw.items()}
    if not backends:
        backends = {"local": vendor_class("local").settings_model.model_validate({"vendor": "local"})}

    default = raw.get("default_backend")
    if default is None:
        if len(backends) == 1:
            default = next(iter(backends))
        elif "local" in backends:
            default = "local"
        else:
            names = ", ".join(sorted(backends))
            raise ConfigError(f"{where}: default_backend is required when several backends are configured ({names})")
    if not isinstance(default, str) or default not in backends:
        names = ", ".join(sorted(backends))
        raise ConfigError(f"{where}: default_backend {default!r} is not a configured backend (configured: {names})")

    return Settings(
        source=path,
        home=default_home(env),
        default_backend=default,
        limits=limits,
        files=files,
        backends=backends,
    )


def _table(raw: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table, not {type(value).__name__}")
    return value


def _backend(name: str, table: Any, where: str) -> BackendSettings:
    section = f"[backends.{name}]"
    if not _BACKEND_NAME.match(name):
        raise ConfigError(
            f"{where}: {section}: backend names may use only letters, digits and '-._~' (they appear in crm:// URIs)"
        )
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: {section} must be a table")
    vendor = table.get("vendor")
    if vendor is None:
        raise ConfigError(f'{where}: {section} vendor: missing required key (e.g. vendor = "local")')
    if not isinstance(vendor, str):
        raise ConfigError(f"{where}: {section} vendor: must be a string")
    try:
        model = vendor_class(vendor).settings_model
    except ConfigError as exc:
        raise ConfigError(f"{where}: {section} vendor: {exc}") from None
    return _validate(model, table, where, section)


def _validate(model: type[_M], data: Mapping[str, Any], where: str, section: str) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(part) for part in err["loc"])
        place = f"{section} {key}" if key else section  # no key: a rule about the table as a whole
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(model.model_fields))
            raise ConfigError(f"{where}: {place}: unknown key (allowed: {allowed})") from None
        if err["type"] == "missing":
            raise ConfigError(f"{where}: {place}: missing required key") from None
        # A validator's own message is written for the reader; pydantic's "Value error, " prefix is noise.
        message = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{where}: {place}: {message}") from None


def _roots(value: Any, path: Path | None, cwd: Path, where: str) -> tuple[Path, ...]:
    """Resolve `files.roots`: `~` expanded, relative to the config file's folder, must exist."""
    if value is None or value == []:
        return (cwd.resolve(),)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where}: [files] roots: must be a list of folder paths")
    base = path.parent if path else cwd
    roots = []
    for item in value:
        root = (base / Path(item).expanduser()).resolve()
        if not root.is_dir():
            raise ConfigError(f"{where}: [files] roots: {item!r} is not an existing folder")
        roots.append(root)
    return tuple(roots)


def _interpolate(value: Any, env: Mapping[str, str], where: str, loc: tuple[str, ...]) -> Any:
    """Replace `${VAR}` in every string with the environment's value; `$$` stands for `$`."""
    if isinstance(value, dict):
        return {key: _interpolate(item, env, where, (*loc, key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, env, where, loc) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        var = match.group(1)
        if var is None:
            return "$"
        if var not in env:
            raise ConfigError(f"{where}: {_describe(loc)}: environment variable {var} is not set")
        return env[var]

    return _VAR.sub(substitute, value)


def _describe(loc: tuple[str, ...]) -> str:
    if len(loc) >= 3 and loc[0] == "backends":
        return f"[backends.{loc[1]}] {'.'.join(loc[2:])}"
    if len(loc) >= 2:
        return f"[{loc[0]}] {'.'.join(loc[1:])}"
    return ".".join(loc)
