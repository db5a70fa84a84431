"""The official MCP conformance suite (npm `@modelcontextprotocol/conformance`) against `crm-mcp serve
--transport http`, in both protocol eras: the stateless 2026-07-28 wire, and the initialize handshake of
2025-11-25 that desktop clients still speak.

Every check that fails or warns must be listed, with its reason, in expected_failures.toml; a listed
check that passes fails the test too, so the list cannot outlive the problem. The suite and its Node
are pinned and installed by suite.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conformance import suite
from tests.deploy.servers import HttpServer, http_servers

pytestmark = [pytest.mark.integration]

EXPECTED = Path(__file__).with_name("expected_failures.toml")

RUNS = {
    # Each scenario at the newest revision it applies to (2026-07-28 where it can; the handshake-era
    # scenarios such as server-initialize at 2025-11-25).
    "newest": [],
    # Every scenario that also applies to 2025-11-25 once more, over the initialize handshake.
    "2025-11-25": ["--spec-version", "2025-11-25"],
}

PROTOCOL_SCENARIOS = [
    "server-initialize",
    "ping",
    "server-stateless",
    "tools-list",
    "tools-call-error",
    "resources-list",
    "prompts-list",
    "sep-2164-resource-not-found",
    "dns-rebinding-protection",
    "http-header-validation",
    "caching",
]
"""Scenarios that test the protocol itself rather than the reference server's fixtures: each must run
and pass (server-stateless less its fixture-only checks listed in expected_failures.toml)."""

_SEVERITY = {"FAILURE": 3, "WARNING": 2, "SUCCESS": 1}
_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


@dataclass
class Expected:
    scenarios: set[str] = field(default_factory=set)
    checks: set[tuple[str, str]] = field(default_factory=set)

    def covers(self, scenario: str, check: str) -> bool:
        return scenario in self.scenarios or (scenario, check) in self.checks

    def entries(self) -> list[str]:
        return sorted([*self.scenarios, *(f"{scenario}:{check}" for scenario, check in self.checks)])


@dataclass
class Run:
    """One run of the suite: each scenario's checks collapsed to one verdict per check id (most severe
    first, as the suite itself does), plus the suite's own exit code and output."""

    verdicts: dict[str, dict[str, str]]
    exit_code: int
    output: str


def load_expected() -> Expected:
    data = tomllib.loads(EXPECTED.read_text(encoding="utf-8"))
    expected = Expected()
    for group in data["group"]:
        assert group.get("reason", "").strip(), f"a group in {EXPECTED.name} has no reason: {group}"
        for entry in group["checks"]:
            scenario, _, check = entry.partition(":")
            if check:
                expected.checks.add((scenario, check))
            else:
                expected.scenarios.add(scenario)
    return expected


def _read_results(directory: Path) -> dict[str, dict[str, str]]:
    verdicts: dict[str, dict[str, str]] = {}
    for result in sorted(directory.iterdir()):
        match = _RESULT_DIR.match(result.name)
        assert match, f"unexpected result folder {result.name}: has the suite's output layout changed?"
        checks = verdicts.setdefault(match["scenario"], {})
        for check in json.loads((result / "checks.json").read_text(encoding="utf-8")):
            status = check["status"]
            if _SEVERITY.get(status, 0) > _SEVERITY.get(checks.get(check["id"], ""), 0) or check["id"] not in checks:
                checks[check["id"]] = status
    return verdicts


def _run_suite(server: HttpServer, workdir: Path, name: str, flags: list[str], baseline: Path) -> Run:
    out = workdir / f"results-{name}"
    done = subprocess.run(
        [
            str(suite.node()),
            str(suite.suite_js()),
            "server",
            "--url",
            server.mcp_url,
            "--suite",
            "all",
            *flags,
            "--expected-failures",
            str(baseline),
            "--output-dir",
            str(out),
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.is_dir(), f"the suite wrote no results:\n{done.stdout}\n{done.stderr}"
    return Run(verdicts=_read_results(out), exit_code=done.returncode, output=done.stdout + done.stderr)


@pytest.fixture(scope="module")
def expected() -> Expected:
    return load_expected()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, expected: Expected) -> Iterator[dict[str, Run]]:
    try:
        suite.install()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    workdir = tmp_path_factory.mktemp("conformance")
    # The suite's own baseline format: a YAML list of strings (JSON strings are YAML strings).
    baseline = workdir / "expected-failures.yml"
    baseline.write_text("server:\n" + "".join(f"  - {json.dumps(e)}\n" for e in expected.entries()), "utf-8")
    with http_servers(workdir / "home", workdir) as (server,):
        yield {name: _run_suite(server, workdir, name, flags, baseline) for name, flags in RUNS.items()}


def _failing(run: Run) -> set[tuple[str, str]]:
    return {
        (scenario, check)
        for scenario, checks in run.verdicts.items()
        for check, status in checks.items()
        if status in ("FAILURE", "WARNING")
    }


@pytest.mark.parametrize("name", RUNS)
def test_no_failure_or_warning_beyond_the_expected_ones(runs: dict[str, Run], expected: Expected, name: str) -> None:
    unexpected = sorted(f"{s}:{c}" for s, c in _failing(runs[name]) if not expected.covers(s, c))
    assert unexpected == [], f"not in {EXPECTED.name}:\n" + "\n".join(unexpected)


@pytest.mark.parametrize("name", RUNS)
def test_no_expected_failure_now_passes(runs: dict[str, Run], expected: Expected, name: str) -> None:
    verdicts = runs[name].verdicts
    stale = [f"{s}:{c}" for s, c in sorted(expected.checks) if verdicts.get(s, {}).get(c) == "SUCCESS"]
    stale += [
        s
        for s in sorted(expected.scenarios)
        if s in verdicts and not any(status in ("FAILURE", "WARNING") for status in verdicts[s].values())
    ]
    assert stale == [], f"these pass now: remove them from {EXPECTED.name}:\n" + "\n".join(stale)


def test_every_expected_failure_still_occurs(runs: dict[str, Run], expected: Expected) -> None:
    """An entry the suite never reports (a renamed check or scenario) would excuse nothing and mislead."""
    failing = set().union(*(_failing(run) for run in runs.values()))
    unseen = [f"{s}:{c}" for s, c in sorted(expected.checks) if (s, c) not in failing]
    unseen += [s for s in sorted(expected.scenarios) if not any(scenario == s for scenario, _ in failing)]
    assert unseen == [], f"listed in {EXPECTED.name} but not reported failing by the suite:\n" + "\n".join(unseen)


@pytest.mark.parametrize("name", RUNS)
def test_the_suite_agrees_with_the_baseline(runs: dict[str, Run], name: str) -> None:
    """The suite's own verdict on the same baseline (exit 1 on an unexpected failure or a stale entry)."""
    run = runs[name]
    assert run.exit_code == 0, run.output[-4000:]


@pytest.mark.parametrize("scenario", PROTOCOL_SCENARIOS)
def test_protocol_scenario_ran_and_passed(runs: dict[str, Run], expected: Expected, scenario: str) -> None:
    checks = runs["newest"].verdicts.get(scenario)
    assert checks, f"{scenario} did not run or reported no checks"
    assert scenario not in expected.scenarios
    passed = [check for check, status in checks.items() if status == "SUCCESS"]
    failed = [
        check for check, status in checks.items() if status == "FAILURE" and (scenario, check) not in expected.checks
    ]
    assert passed
    assert failed == []


def test_every_message_crm_mcp_sent_matched_the_wire_schema(runs: dict[str, Run]) -> None:
    """`wire-schema-valid` validates every JSON-RPC message the server sent against the spec's schema."""
    for name, run in runs.items():
        statuses = [checks["wire-schema-valid"] for checks in run.verdicts.values() if "wire-schema-valid" in checks]
        assert len(statuses) >= 20, f"{name}: the wire-schema check ran in only {len(statuses)} scenarios"
        assert set(statuses) == {"SUCCESS"}, name
