"""The virtual environment that LangChain's MCP adapters run in.

Every langchain-mcp-adapters release requires mcp<2 and crm-mcp requires mcp>=2.3, so LangChain
cannot share crm-mcp's environment: it gets its own, built from langchain-requirements.txt at
$CRM_MCP_LANGCHAIN_VENV (default `.cache/langchain-venv` in the repository). The tests build it on
first use; `.ci/run` builds it up front (`python3 -m tests.integrations.langchain_env`) so that
time stays out of the test run. A venv built from other requirements is rebuilt. Standard library
only: `.ci/run` runs this before crm-mcp is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).with_name("langchain-requirements.txt")
MARKER = "crm-mcp-requirements.txt"  # inside the venv: the requirements it was built from


class BuildError(RuntimeError):
    """The venv could not be built (no package index, a version gone, ...)."""


def venv_dir() -> Path:
    return Path(os.environ.get("CRM_MCP_LANGCHAIN_VENV", REPO / ".cache" / "langchain-venv"))


def venv_python() -> Path:
    return venv_dir() / "bin" / "python"


def is_current() -> bool:
    marker = venv_dir() / MARKER
    return venv_python().exists() and marker.exists() and marker.read_text() == REQUIREMENTS.read_text()


def build() -> Path:
    """The venv's python, building or rebuilding the venv when it is missing or out of date."""
    if is_current():
        return venv_python()
    target = venv_dir()
    if target.exists() and any(target.iterdir()) and not (target / "pyvenv.cfg").exists():
        raise BuildError(f"{target} exists and is not a virtual environment: remove it or set CRM_MCP_LANGCHAIN_VENV")
    _run([sys.executable, "-m", "venv", "--clear", str(target)])
    pip = [str(venv_python()), "-m", "pip", "--disable-pip-version-check", "install", "-q"]
    _run([*pip, "-r", str(REQUIREMENTS)])
    (target / MARKER).write_text(REQUIREMENTS.read_text())
    return venv_python()


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise BuildError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")


if __name__ == "__main__":
    print(build())
