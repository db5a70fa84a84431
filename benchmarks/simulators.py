"""Each vendor simulator in a process of its own, served by uvicorn on a loopback socket.

A process of its own, so the simulator's work (parsing a 270 MB JSON body, base64-encoding a
download) neither shares the benchmark client's interpreter lock nor counts toward the server's
memory. The child prints one JSON line (its URL and the `[backends.<vendor>]` TOML that reaches
it) and serves until its stdin closes.

`python -m benchmarks.simulators VENDOR` is the child; `running_simulator(VENDOR)` the parent.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.latency import CONTROL_PATH, Latency

__all__ = ["VENDORS", "RunningSimulator", "running_simulator"]

VENDORS = ("creatio", "espocrm", "superoffice", "wello")
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RunningSimulator:
    vendor: str
    url: str
    toml: str
    pid: int

    def set_latency(self, seconds: float) -> None:
        response = httpx.post(f"{self.url.rstrip('/')}{CONTROL_PATH}", params={"seconds": str(seconds)})
        response.raise_for_status()


@contextmanager
def running_simulator(vendor: str, log: Path) -> Iterator[RunningSimulator]:
    """Start the child, wait for its JSON line, stop it on the way out."""
    with log.open("ab") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.simulators", vendor],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=REPO,
        )
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            if not line:
                raise RuntimeError(f"the {vendor} simulator did not start; see {log}")
            info = json.loads(line)
            yield RunningSimulator(vendor=vendor, url=info["url"], toml=info["toml"], pid=child.pid)
        finally:
            assert child.stdin is not None
            child.stdin.close()
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _creatio() -> tuple[Any, Callable[[str], str]]:
    from tests.simulators.creatio import contract_simulator

    sim = contract_simulator(expiry_style="redirect")
    # The system setting MaxFileSize (10 MiB by default) is raised, as an administrator does for big files.
    sim.max_file_size = 1024 * 1024 * 1024
    return (
        sim,
        lambda url: (
            f'[backends.creatio]\nvendor = "creatio"\nurl = "{url}"\nauth = "forms"\n'
            f'username = "{sim.username}"\npassword = "{sim.password}"\n'
        ),
    )


def _espocrm() -> tuple[Any, Callable[[str], str]]:
    from tests.simulators.espocrm import PASSWORD, seeded_simulator

    sim = seeded_simulator()
    return (
        sim,
        lambda url: (
            f'[backends.espocrm]\nvendor = "espocrm"\nurl = "{url}"\nusername = "jane"\npassword = "{PASSWORD}"\n'
            'contact_photo_field = "cPhoto"\n'
        ),
    )


def _superoffice() -> tuple[Any, Callable[[str], str]]:
    from tests.simulators.superoffice import contract_simulator

    # As the contract suite's socket harness: SuperOffice Online (application token, SOAP faults).
    sim = contract_simulator(application_token="app-token-123456", error_style="fault", expiry_style="header")

    def toml(url: str) -> str:
        return (
            f'[backends.superoffice]\nvendor = "superoffice"\nurl = "{url}/{sim.tenant}"\n'
            f'username = "{sim.username}"\npassword = "{sim.password}"\n'
            f'application_token = "{sim.application_token}"\n'
        )

    return sim, toml


def _wello() -> tuple[Any, Callable[[str], str]]:
    from tests.simulators.wello import WelloSimulator

    sim = WelloSimulator().seed()
    return (
        sim,
        lambda url: (
            f'[backends.wello]\nvendor = "wello"\nurl = "{url}"\nusername = "{sim.username}"\n'
            f'password = "{sim.password}"\ndomain = "{sim.domain}"\napi_version = "1"\n'
        ),
    )


_BUILDERS: dict[str, Callable[[], tuple[Any, Callable[[str], str]]]] = {
    "creatio": _creatio,
    "espocrm": _espocrm,
    "superoffice": _superoffice,
    "wello": _wello,
}


def _serve(vendor: str) -> None:
    import uvicorn

    sim, toml = _BUILDERS[vendor]()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Accepted sockets inherit this. Without it, a uvicorn server handed a pre-bound socket answers a
    # request that follows another on the same keep-alive connection about 40 ms late (delayed ACK):
    # measured 44 ms instead of 1 ms per request, which would be charged to whichever client is timed.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(Latency(sim), log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)

    def announce_then_wait_for_eof() -> None:
        while not server.started:
            threading.Event().wait(0.01)
        sys.stdout.write(json.dumps({"url": url, "toml": toml(url)}) + "\n")
        sys.stdout.flush()
        sys.stdin.read()
        server.should_exit = True

    threading.Thread(target=announce_then_wait_for_eof, daemon=True).start()
    server.run(sockets=[sock])


if __name__ == "__main__":
    _serve(sys.argv[1])
