"""The scanner the secrets tests rely on finds what it must (else 'no leaks' would prove nothing)."""

from __future__ import annotations

import base64

import pytest

from tests.security.leaks import find_leaks

SECRET = "pw-Q7x9Zk2Lm"


@pytest.mark.parametrize(
    "text",
    [
        f"error: {SECRET}",
        "Authorization: Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode(),
        "blob=" + base64.urlsafe_b64encode(f'{{"password": "{SECRET}"}}'.encode()).decode(),
        "x" + base64.b64encode(f"ab{SECRET}cd".encode()).decode() + "y",
    ],
)
def test_finds_a_secret_plain_or_in_base64(text: str) -> None:
    assert find_leaks(text, [SECRET])


def test_finds_nothing_in_clean_text() -> None:
    assert find_leaks("Case CS-1001 has 3 files; " + base64.b64encode(b"hello world!!").decode(), [SECRET]) == []
