"""Remembers the secrets of this process and scrubs them from any text that leaves it.

Masking happens once, before anything is written: every value of every log event (the
runner's, and stdlib records from any logger, masked at creation), the run report that every
other sink reads (step summary, annotations, termination message, Kubernetes Events), and
whatever the project prints (`MaskedStream`). URLs are only ever rendered with
`hide_password=True` on top of that.
"""

from __future__ import annotations

import io
import json
import re
from typing import TextIO
from urllib.parse import quote, quote_plus, unquote

MASK = "***"
_secrets: set[str] = set()
# Shortest secret worth scrubbing: masking "a" or "1" everywhere would wreck every log line and
# such a password is not a secret anyone can keep anyway.
_MIN_LEN = 3
# The backstop: the password part of any `scheme://user:password@host`, whoever wrote it. A
# space may sit in it (SQLAlchemy renders one unescaped); `@` and `/` cannot (every URL
# renderer escapes them), so the match ends at the first `@`.
_USERINFO = re.compile(r"://[^\s:/?#@]*:(?P<password>[^@/\r\n]+?)@")
_PERCENT = re.compile(r"%[0-9A-F]{2}")


def spellings(secret: str) -> set[str]:
    """Every way `secret` may be printed: as given; percent-encoded fully, with urllib's
    default safe characters, as SQLAlchemy renders a URL, and in lower-case hex; form-encoded;
    escaped inside a JSON string or a Python repr."""
    encoded = quote(secret, safe="")
    forms = {
        secret,
        encoded,
        _PERCENT.sub(lambda m: m.group(0).lower(), encoded),
        quote(secret),
        quote(secret, safe=" +"),  # sqlalchemy.engine.URL.render_as_string
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
    }
    return {form for form in forms if len(form) >= _MIN_LEN}


def register(secret: str | None) -> None:
    """Remember `secret`, in every spelling, for masking from now on."""
    if secret:
        _secrets.update(spellings(secret))
        _secrets.update(spellings(unquote(secret)))


def register_url_text(raw_url: str) -> None:
    """Remember the password of a URL as the user typed it (and decoded), even when it does
    not parse: everything between the first `:` after `scheme://` and the last `@` (and, in
    case, only up to the first `@`)."""
    _, sep, rest = raw_url.strip().partition("://")
    if not sep or "@" not in rest:
        return
    userinfo = rest.rsplit("@", 1)[0]
    if ":" in userinfo:
        password = userinfo.split(":", 1)[1]
        register(password)
        register(password.split("@", 1)[0])  # a stray unencoded `@` ends it early for some


def redact(text: str) -> str:
    """`text` with every registered secret, and the password of every URL in it, masked."""
    # Longest first, so that an encoded form is masked whole rather than around a shorter one.
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return _USERINFO.sub(
        lambda m: (
            m.group(0).replace(m.group("password"), MASK)
            if m.group("password") != MASK
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
