"""One harness per backend the contract suite runs against.

A harness starts whatever the backend needs (nothing for `local`; a vendor simulator for the others),
yields the `[backends.<name>]` TOML that points at it, and names the ids the suite needs. The data
must contain what the demo set has: a case titled "Printer on fire" with three or more files of
different types, the contact "Alexander Wilson" with a photo and the contact "John Best" without.
Each vendor adds a module `tests/contract/harness_<vendor>.py` defining `HARNESS` (or a list
`HARNESSES`, e.g. in-process and over a socket); it is picked up here, and the tests themselves stay
as they are.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["HARNESSES", "Harness", "Started"]


@dataclass(frozen=True)
class Started:
    """A running backend: its `[backends.<name>]` TOML and, for an in-process simulator, the httpx
    transport that reaches it (None when the TOML's URL points at a real socket)."""

    toml: str
    transport: httpx.AsyncBaseTransport | None = None


@dataclass(frozen=True)
class Harness:
    backend: str
    """The backend's name in the configuration (and in crm:// URIs)."""
    start: Callable[[Path], AbstractAsyncContextManager[Started]]
    """Given a scratch folder, start the backend's service and yield how to reach it."""
    missing_id: str
    """A well-formed id of a record that does not exist."""
    malformed_id: str
    """An id this backend must refuse before sending anything."""
    label: str = ""
    """Test id when one backend has several harnesses (e.g. "creatio-socket"); default: `backend`."""

    @property
    def key(self) -> str:
        return self.label or self.backend


@asynccontextmanager
async def _local(scratch: Path) -> AsyncIterator[Started]:
    yield Started(f'[backends.local]\nvendor = "local"\npath = "{scratch / "store"}"\n')


LOCAL = Harness(
    backend="local",
    start=_local,
    missing_id="6f1c2a4e-0000-4000-8000-000000000000",
    malformed_id="CS-1001",
)


def _discover() -> dict[str, Harness]:
    found = [LOCAL]
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name.startswith("harness_"):
            loaded = importlib.import_module(f"tests.contract.{module.name}")
            found += getattr(loaded, "HARNESSES", None) or [loaded.HARNESS]
    return {harness.key: harness for harness in found}


HARNESSES: dict[str, Harness] = _discover()
