"""Backends by vendor name: each vendor is one module, registered here by one line.

Modules are imported only when a configuration uses them, so a vendor's own dependencies cost
nothing to users of the others.
"""

from __future__ import annotations

import importlib

from crm_mcp.backends.base import Backend, BackendContext, BackendSettings
from crm_mcp.errors import ConfigError

__all__ = ["VENDORS", "Backend", "BackendContext", "BackendSettings", "vendor_class"]

VENDORS: dict[str, str] = {
    "local": "crm_mcp.backends.local:LocalBackend",
    "espocrm": "crm_mcp.backends.espocrm:EspoCrmBackend",
    "creatio": "crm_mcp.backends.creatio:CreatioBackend",
    "wello": "crm_mcp.backends.wello:WelloBackend",
    "superoffice": "crm_mcp.backends.superoffice:SuperOfficeBackend",
}
"""vendor name → `module:Class` implementing `Backend`."""


def vendor_class(vendor: str) -> type[Backend]:
    """The backend class for `vendor`; `ConfigError` listing the known vendors if there is none."""
    target = VENDORS.get(vendor)
    if target is None:
        known = ", ".join(sorted(VENDORS))
        raise ConfigError(f"unknown vendor {vendor!r} (this version supports: {known})")
    module_name, _, class_name = target.partition(":")
    cls: type[Backend] = getattr(importlib.import_module(module_name), class_name)
    return cls
