"""Finding secrets in output: plainly, or inside base64 (a Basic authorization, an encoded body)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/_-]{12,}={0,2}")


def _decodings(token: str) -> Iterable[str]:
    padded = token + "=" * (-len(token) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        for start in range(4):  # a secret base64-encoded inside a longer value may sit at any alignment
            piece = padded[start:]
            piece = piece[: len(piece) - len(piece) % 4]
            try:
                yield decode(piece).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                continue


def find_leaks(text: str, secrets: Iterable[str]) -> list[str]:
    """Each secret found in `text`, as `secret` or `secret (base64)`."""
    needles = [secret for secret in secrets if secret]
    found = [needle for needle in needles if needle in text]
    for needle in needles:
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            if encode(needle.encode()).decode().rstrip("=")[:-2] in text:
                found.append(f"{needle} (base64)")
    for token in _BASE64_TOKEN.findall(text):
        for decoded in _decodings(token):
            found += [f"{needle} (base64)" for needle in needles if needle in decoded]
    return sorted(set(found))
