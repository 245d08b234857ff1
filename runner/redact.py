"""Remembers the secrets of this process and scrubs them from any text that leaves it.

This is the backstop behind the first line of defence (URLs are only ever rendered with
`hide_password=True`): every log line and every error reason passes through `redact`.
"""

from __future__ import annotations

import io
import re
from typing import TextIO
from urllib.parse import quote, quote_plus

MASK = "***"
_secrets: set[str] = set()
# Shortest secret worth scrubbing: masking "a" or "1" everywhere would wreck every log line and
# such a password is not a secret anyone can keep anyway.
_MIN_LEN = 3
_USERINFO = re.compile(r"://[^/?#@\s]*?:(?P<password>[^@\s]*)@")


def register(secret: str | None) -> None:
    """Remember `secret` in every form it may be printed: raw and URL-encoded."""
    if not secret:
        return
    for form in {secret, quote(secret, safe=""), quote_plus(secret), quote(secret)}:
        if len(form) >= _MIN_LEN:
            _secrets.add(form)


def register_url_text(raw_url: str) -> None:
    """Remember the password of a URL as the user typed it, even when it does not parse."""
    match = _USERINFO.search(raw_url)
    if match and match.group("password"):
        register(match.group("password"))


def redact(text: str) -> str:
    # Longest first, so that an encoded form is masked whole rather than around a shorter one.
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return _USERINFO.sub(
        lambda m: (
            m.group(0).replace(m.group("password"), MASK)
            if m.group("password") and m.group("password") != MASK
            else m.group(0)
        ),
        text,
    )


def forget_all() -> None:
    """For tests: start from an empty registry."""
    _secrets.clear()


class MaskedStream(io.TextIOBase):
    """A text stream that masks secrets line by line before writing to `target`: what the
    project prints (`print()`, a handler on `sys.stderr`) passes the same masking as the
    runner's own events."""

    def __init__(self, target: TextIO) -> None:
        self._target = target
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            complete, _, self._pending = self._pending.rpartition("\n")
            self._target.write(redact(complete) + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._target.write(redact(self._pending))
            self._pending = ""
        self._target.flush()

    def isatty(self) -> bool:
        return self._target.isatty()

    def fileno(self) -> int:
        return self._target.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._target, "encoding", "utf-8")
