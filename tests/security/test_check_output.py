"""`crm-mcp check --log-level debug` against every vendor (simulators on loopback sockets), with the
secrets given the production way (`${VAR}` in the file): neither stdout nor stderr shows any of them,
nor any session value the CRMs issued — when the logins succeed and when the credentials are wrong."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.security.leaks import find_leaks
from tests.security.test_secrets import SECRETS
from tests.simulators import creatio, espocrm, superoffice, wello
from tests.test_cli import run_cli

pytestmark = pytest.mark.integration

ENV = {f"S_{name.upper()}": value for name, value in SECRETS.items()}


class Crms:
    """The four simulators, running, with the configuration that reaches them."""

    def __init__(self, stack: ExitStack) -> None:
        self.creatio = creatio.contract_simulator(
            password=SECRETS["creatio_password"], client_secret=SECRETS["creatio_client_secret"]
        )
        self.espocrm = espocrm.seeded_simulator((9, 1))
        self.espocrm.add_user(espocrm.SimUser("k", auth_method="ApiKey", api_key=SECRETS["espocrm_api_key"]))
        self.espocrm.add_user(
            espocrm.SimUser("h", auth_method="Hmac", api_key="hmac-user-key", secret_key=SECRETS["espocrm_hmac_secret"])
        )
        self.espocrm.add_user(
            espocrm.SimUser("jane2", type="regular", auth_method=None, password=SECRETS["espocrm_password"])
        )
        self.superoffice = superoffice.contract_simulator(
            password=SECRETS["superoffice_password"], application_token=SECRETS["superoffice_application_token"]
        )
        self.wello = wello.WelloSimulator(password=SECRETS["wello_password"]).seed()
        creatio_url = stack.enter_context(creatio.serve(self.creatio))
        espo_url = stack.enter_context(creatio.serve(self.espocrm))  # any ASGI app: a uvicorn thread
        so_url = stack.enter_context(superoffice.serve(self.superoffice))
        wello_url = stack.enter_context(wello.serve(self.wello))
        self.toml = f"""
default_backend = "creatio-forms"
[backends.creatio-forms]
vendor = "creatio"
url = "{creatio_url}"
auth = "forms"
username = "{self.creatio.username}"
password = "${{S_CREATIO_PASSWORD}}"
[backends.creatio-oauth]
vendor = "creatio"
url = "{creatio_url}"
auth = "oauth"
token_url = "{creatio_url}/connect/token"
client_id = "{self.creatio.client_id}"
client_secret = "${{S_CREATIO_CLIENT_SECRET}}"
[backends.espo-key]
vendor = "espocrm"
url = "{espo_url}"
api_key = "${{S_ESPOCRM_API_KEY}}"
[backends.espo-hmac]
vendor = "espocrm"
url = "{espo_url}"
api_key = "hmac-user-key"
secret_key = "${{S_ESPOCRM_HMAC_SECRET}}"
[backends.espo-basic]
vendor = "espocrm"
url = "{espo_url}"
username = "jane2"
password = "${{S_ESPOCRM_PASSWORD}}"
[backends.so]
vendor = "superoffice"
url = "{so_url}"
username = "{self.superoffice.username}"
password = "${{S_SUPEROFFICE_PASSWORD}}"
application_token = "${{S_SUPEROFFICE_APPLICATION_TOKEN}}"
[backends.wello]
vendor = "wello"
url = "{wello_url}"
username = "{self.wello.username}"
password = "${{S_WELLO_PASSWORD}}"
domain = "{self.wello.domain}"
"""

    def issued(self) -> set[str]:
        return {
            *self.creatio.sessions,
            *self.creatio.sessions.values(),
            *self.creatio.tokens,
            *self.superoffice.tickets,
        }


@pytest.fixture
def crms() -> Iterator[Crms]:
    with ExitStack() as stack:
        yield Crms(stack)


BACKENDS = ["creatio-forms", "creatio-oauth", "espo-key", "espo-hmac", "espo-basic", "so", "wello"]


def test_check_succeeds_on_every_vendor_and_shows_no_secret(tmp_path: Path, crms: Crms) -> None:
    (tmp_path / "crm-mcp.toml").write_text(crms.toml)
    done = run_cli(tmp_path, "check", "--log-level", "debug", **ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in BACKENDS:
        assert f"\n{name} (" in done.stdout and ": ok — " in done.stdout.split(f"\n{name} (")[1].split("\n")[0]
    issued = crms.issued()
    assert issued  # Creatio sessions and tokens, SuperOffice tickets: secrets too
    assert find_leaks(done.stdout, {*SECRETS.values(), *issued}) == []
    assert find_leaks(done.stderr, {*SECRETS.values(), *issued}) == []


def test_check_with_wrong_secrets_fails_on_every_vendor_and_shows_none(tmp_path: Path, crms: Crms) -> None:
    (tmp_path / "crm-mcp.toml").write_text(crms.toml)
    wrong = {key: f"wrong-{index}-{value[::-1]}" for index, (key, value) in enumerate(ENV.items())}
    done = run_cli(tmp_path, "check", "--log-level", "debug", **wrong)
    assert done.returncode == 1, done.stdout + done.stderr
    for name in BACKENDS:
        assert f"{name} (" in done.stdout and "FAILED" in done.stdout.split(f"{name} (")[1].split("\n")[0], done.stdout
    secrets = {*SECRETS.values(), *wrong.values(), *crms.issued()}
    assert find_leaks(done.stdout, secrets) == []
    assert find_leaks(done.stderr, secrets) == []
