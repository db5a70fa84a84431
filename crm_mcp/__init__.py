"""crm-mcp: an MCP server for the files kept in CRMs (Creatio, EspoCRM, SuperOffice, Wello, a local store)."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
